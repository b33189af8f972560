//! [`KafkaSource`]: a consumer group member as a backstop [`Source`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backstop::{Delivery, Source, SourceError};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::acker::KafkaAcker;
use crate::dispatch::Dispatcher;
use crate::poller::{GroupContext, PollThread};
use crate::{Error, KafkaConfig};

/// A member of a consumer group, handing out deliveries with an [`Acker`](backstop::Acker).
///
/// A dedicated thread polls the consumer (see the crate docs for why);
/// `next` takes from the messages it received, at most `max_in_flight`
/// unsettled at once. Inside a partition, a message waits while an earlier
/// message with the same key is unfinished; other keys and partitions run
/// concurrently. Offsets are committed up to the last finished message of
/// each partition (never past one that runs or failed), so a restarted
/// consumer resumes at the first unfinished offset. A nacked or dropped
/// delivery is handed out again by this consumer.
///
/// `close` (the runner calls it) commits what is done and leaves the group.
/// Dropping the source without `close` does the same in the background.
#[derive(Debug)]
pub struct KafkaSource {
    dispatcher: Arc<Dispatcher>,
    thread: PollThread,
    topics: Vec<String>,
    group: String,
    close_wait: Duration,
}

impl KafkaSource {
    /// Joins `config.group` subscribed to `topics` (main topics) and
    /// `retry_topics` (whose messages are held until their `x-backstop-due`),
    /// handing out at most `max_in_flight` unsettled deliveries.
    pub fn new(
        config: &KafkaConfig,
        topics: &[&str],
        retry_topics: &[String],
        max_in_flight: usize,
    ) -> Result<Self, Error> {
        let dispatcher = Dispatcher::new(
            max_in_flight,
            config.max_pending_per_partition,
            config.max_pending_bytes_per_partition,
        );
        let delayed: Arc<HashSet<String>> = Arc::new(retry_topics.iter().cloned().collect());
        let context = GroupContext::new(Arc::clone(&dispatcher), Arc::clone(&delayed));
        let consumer: BaseConsumer<GroupContext> = config
            .consumer_config()
            .create_with_context(context)
            .map_err(Error::Config)?;
        let mut all: Vec<&str> = topics.to_vec();
        all.extend(retry_topics.iter().map(String::as_str));
        consumer
            .subscribe(&all)
            .map_err(Error::kafka(format!("subscribing to {all:?}")))?;
        let thread = PollThread::start(consumer, Arc::clone(&dispatcher), delayed)?;
        Ok(KafkaSource {
            dispatcher,
            thread,
            topics: all.iter().map(|t| (*t).to_owned()).collect(),
            group: config.group.clone(),
            close_wait: config.session_timeout + Duration::from_secs(10),
        })
    }

    /// The topics this source is subscribed to (main and retry topics).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl Source for KafkaSource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        loop {
            match self.dispatcher.take() {
                Ok(Some(taken)) => {
                    let acker = KafkaAcker {
                        dispatcher: Arc::clone(&self.dispatcher),
                        ticket: taken.ticket,
                    };
                    return Some(Ok(Delivery::new(taken.message, acker)));
                }
                Ok(None) => self.dispatcher.changed().await,
                Err(None) => return None,
                Err(Some(error)) => return Some(Err(error)),
            }
        }
    }

    async fn close(&mut self) {
        self.dispatcher.close();
        self.thread.stop(self.close_wait).await;
    }
}
