//! [`KafkaSource`]: a consumer group member as a backstop [`Source`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backstop::delivery::Delivery;
use backstop::runner::{Source, SourceError};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::acker::KafkaAcker;
use crate::depth::DlqDepth;
use crate::dispatch::{Dispatcher, Ordered, Take};
use crate::link::Link;
use crate::parked_reader::ParkedReader;
use crate::poller::{GroupContext, PollThread};
use crate::telemetry::SourceMetrics;
use crate::transaction::{DeliverySlot, Pending, Transactor};
use crate::{Error, KafkaConfig};

/// Retry topic → the source topic its copies belong to: the source's own
/// table, so a copy's origin never comes from a header or a topic's name.
pub(crate) type RetryTable = HashMap<String, RetryRoute>;

/// Where a retry topic's copies belong, and how long one may be held.
#[derive(Debug, Clone)]
pub(crate) struct RetryRoute {
    /// The source topic its copies belong to.
    pub(crate) source: String,
    /// The longest a copy is held for its due time: the tier's delay
    /// ([`RetryTiers::hold_limit`](crate::RetryTiers::hold_limit)).
    pub(crate) hold_limit: Duration,
}

/// A member of a consumer group, handing out deliveries with an [`Acker`](backstop::delivery::Acker).
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
/// While the runner's breaker is open or paused ([`Source::pause`]) every
/// assigned partition is paused and the poll thread keeps polling, so the
/// member stays in its group and nothing is committed past unfinished work.
///
/// `close` (the runner calls it) commits what is done and leaves the group.
/// Dropping the source without `close` does the same in the background.
#[derive(Debug)]
pub struct KafkaSource {
    dispatcher: Arc<Dispatcher>,
    thread: PollThread,
    link: Arc<Link>,
    topics: Vec<String>,
    group: String,
    close_wait: Duration,
    config: KafkaConfig,
    /// Topics [`Source::preflight`] requires: the DLQ and retry topics.
    required: Vec<String>,
    /// Ordered retries: each main topic with its parked topic, which must
    /// have at least its partitions.
    parked: Vec<(String, String)>,
    /// Reads the depth of the DLQ topics while the source lives.
    dlq_depth: Option<DlqDepth>,
    /// Exactly-once mode: what each delivery produced, until committed.
    pending: Option<Arc<Pending>>,
}

impl KafkaSource {
    /// Joins `config.group` subscribed to `topics` (main topics) and
    /// `retry_topics` (whose messages are held until their `x-backstop-due`,
    /// at most their tier's delay: see [`RetryTiers::hold_limit`](crate::RetryTiers::hold_limit)),
    /// handing out at most `max_in_flight` unsettled deliveries.
    ///
    /// Each retry topic comes with the source topic its copies belong to,
    /// `(retry topic, source topic)`: dead letters and further retries of a
    /// copy consumed from it go to that source's DLQ and retry topics
    /// ([`Meta::retry_of`](backstop::message::Meta::retry_of)).
    ///
    /// If the consumer's poll thread dies, `next` returns a fatal
    /// [`SourceError`] (the runner stops with it), then `None`.
    pub fn new(
        config: &KafkaConfig,
        topics: &[&str],
        retry_topics: &[(String, String)],
        max_in_flight: usize,
    ) -> Result<Self, Error> {
        let dispatcher = Dispatcher::with_totals(
            max_in_flight,
            (
                config.max_pending_per_partition,
                config.max_pending_bytes_per_partition,
            ),
            (config.max_pending, config.max_pending_bytes),
        );
        let delayed: Arc<RetryTable> = Arc::new(
            retry_topics
                .iter()
                .map(|(retry, source)| {
                    let route = RetryRoute {
                        source: source.clone(),
                        hold_limit: config.retry_tiers.hold_limit(retry),
                    };
                    (retry.clone(), route)
                })
                .collect(),
        );
        let link = Arc::new(Link::new(&config.group));
        let (pending, transactor) = match &config.exactly_once {
            Some(settings) => {
                let pending = Arc::new(Pending::limited(config.max_message_bytes));
                dispatcher.transactional(Arc::clone(&pending));
                let transactor = Transactor::new(config, settings, Arc::clone(&pending))?;
                (
                    Some(pending),
                    Some(Arc::new(std::sync::Mutex::new(transactor))),
                )
            }
            None => (None, None),
        };
        let reader = if config.ordered_retries {
            if config.exactly_once.is_none() {
                return Err(Error::OrderedRetriesNeedTransactions);
            }
            dispatcher.ordered(Ordered::new(
                &config.group,
                topics.iter().map(|t| (*t).to_owned()),
                retry_topics.iter().map(|(retry, _)| retry.clone()),
            ));
            Some(ParkedReader::new(config)?)
        } else {
            None
        };
        let tiers: Vec<(String, String)> = retry_topics
            .iter()
            .map(|(retry, source)| {
                let prefix = crate::names::retry_prefix(source, &config.group);
                let tier = retry.strip_prefix(&prefix).unwrap_or(retry);
                (retry.clone(), tier.to_owned())
            })
            .collect();
        let metrics = Arc::new(SourceMetrics::new(topics, &tiers, &config.group));
        let context = GroupContext::new(
            Arc::clone(&dispatcher),
            Arc::clone(&delayed),
            Arc::clone(&link),
            Arc::clone(&metrics),
            transactor.clone(),
        );
        let consumer: BaseConsumer<GroupContext> = config
            .consumer_config()
            // The lag's high watermarks (see `telemetry`).
            .set(
                "statistics.interval.ms",
                config
                    .metrics_interval
                    .as_millis()
                    .clamp(1, 86_400_000)
                    .to_string(),
            )
            .create_with_context(context)
            .map_err(Error::Config)?;
        let mut all: Vec<&str> = topics.to_vec();
        all.extend(retry_topics.iter().map(|(retry, _)| retry.as_str()));
        consumer
            .subscribe(&all)
            .map_err(Error::kafka(format!("subscribing to {all:?}")))?;
        let thread = PollThread::start(
            consumer,
            Arc::clone(&dispatcher),
            delayed,
            config.group.clone(),
            Arc::clone(&link),
            (metrics, config.metrics_interval),
            (transactor, reader),
        )?;
        Ok(KafkaSource {
            dispatcher,
            thread,
            link,
            topics: all.iter().map(|t| (*t).to_owned()).collect(),
            group: config.group.clone(),
            close_wait: config.session_timeout + Duration::from_secs(10),
            config: config.clone(),
            required: Vec::new(),
            parked: if config.ordered_retries {
                topics
                    .iter()
                    .map(|t| ((*t).to_owned(), crate::parked_topic(t, &config.group)))
                    .collect()
            } else {
                Vec::new()
            },
            dlq_depth: None,
            pending,
        })
    }

    /// Requires these topics (the DLQ and retry topics) to exist when the
    /// runner starts ([`Source::preflight`]).
    pub(crate) fn require(mut self, topics: Vec<String>) -> Self {
        self.required = topics;
        self
    }

    /// Reports the depth of `dlqs`, the DLQ topics of the main `topics`,
    /// every [`KafkaConfig::metrics_interval`] while the source lives.
    pub(crate) fn watch_dlqs(mut self, topics: &[&str], dlqs: &[String]) -> Result<Self, Error> {
        self.dlq_depth = Some(DlqDepth::start(&self.config, topics, dlqs)?);
        Ok(self)
    }

    /// Skips the check that the DLQ and retry topics exist when the runner
    /// starts (for a source whose dead letters go elsewhere).
    #[must_use]
    pub fn skip_destination_check(mut self) -> Self {
        self.required.clear();
        self
    }

    /// The topics that must exist before the first delivery is handled.
    pub fn required_topics(&self) -> &[String] {
        &self.required
    }

    /// The topics this source is subscribed to (main and retry topics).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The labels of this consumer's metrics: the consumed topics joined
    /// with `,` as `source`, the group id as `group` (see
    /// [`MetricLabels`](backstop::metrics::MetricLabels)).
    pub fn metric_labels(&self) -> backstop::metrics::MetricLabels {
        backstop::metrics::MetricLabels::new(self.topics.join(","), &self.group)
    }

    /// What the source holds now over all its partitions: messages received
    /// and not yet committable, and the bytes of those not finished (the
    /// figures [`KafkaConfig::max_pending`] and
    /// [`KafkaConfig::max_pending_bytes`] bound).
    pub fn pending(&self) -> (usize, usize) {
        self.dispatcher.pending()
    }
}

impl KafkaSource {
    /// Ordered retries: every main partition has its parked partition (a
    /// main topic grown without [`Kafka::ensure_topics`](crate::Kafka::ensure_topics)
    /// would leave its new partitions' keys waiting for a load that never ends).
    async fn check_parked(&self, admin: &crate::Topics) -> Result<(), SourceError> {
        for (main, parked) in &self.parked {
            let count = |topic: &str| {
                let topic = topic.to_owned();
                async move {
                    admin.partitions(&topic).await.map_err(|e| {
                        SourceError::Disconnected(
                            format!("checking the parked topic {topic}: {e}").into(),
                        )
                    })
                }
            };
            let (Some(main_count), Some(parked_count)) = (count(main).await?, count(parked).await?)
            else {
                continue;
            };
            if parked_count < main_count {
                return Err(SourceError::Fatal(
                    format!(
                        "the parked topic {parked:?} has {parked_count} partitions and {main:?} has {main_count}: \
                         ordered retries need one per partition; run Kafka::ensure_topics (group {:?}) to grow it",
                        self.group
                    )
                    .into(),
                ));
            }
        }
        Ok(())
    }
}

impl Source for KafkaSource {
    /// Ready once the consumer joined its group (an empty assignment is
    /// ready); not ready while the cluster cannot be reached. The poll
    /// thread's liveness counts for the runner's.
    fn attach(&mut self, health: &backstop::runner::Health) {
        health.readiness().reported_by_source();
        self.link.attach(health.readiness().clone());
        health.watch(self.thread.liveness().clone());
    }

    async fn preflight(&mut self) -> Result<(), SourceError> {
        if self.required.is_empty() {
            return Ok(());
        }
        let unreachable = |e: Error| {
            SourceError::Disconnected(format!("checking the DLQ and retry topics: {e}").into())
        };
        let admin =
            crate::Topics::new(&self.config).map_err(|e| SourceError::Fatal(Box::new(e)))?;
        let mut missing = Vec::new();
        for topic in &self.required {
            if admin
                .partitions(topic)
                .await
                .map_err(unreachable)?
                .is_none()
            {
                missing.push(topic.clone());
            }
        }
        if missing.is_empty() {
            return self.check_parked(&admin).await;
        }
        Err(SourceError::Fatal(Box::new(
            backstop::runner::MissingDestinations {
                source_name: self.topics.join(","),
                missing,
                how: format!(
                    "create them with Kafka::ensure_topics (group {:?}), or call skip_destination_check() \
                 on a source whose dead letters go elsewhere",
                    self.group
                ),
            },
        )))
    }

    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        loop {
            match self.dispatcher.take() {
                Take::Ready(taken) => {
                    let slot = self.pending.as_ref().map(|pending| DeliverySlot {
                        pending: Arc::clone(pending),
                        tp: taken.ticket.tp.clone(),
                        generation: taken.ticket.generation,
                        offset: taken.ticket.offset,
                    });
                    let acker = KafkaAcker {
                        dispatcher: Arc::clone(&self.dispatcher),
                        ticket: taken.ticket,
                    };
                    let delivery =
                        Delivery::shared(taken.message, acker).fenced_by_shared(taken.revoked);
                    return Some(Ok(match slot {
                        Some(slot) => delivery.in_transaction(Arc::new(slot)),
                        None => delivery,
                    }));
                }
                Take::Empty => self.dispatcher.changed().await,
                Take::Closed => return None,
                Take::Failed(error) => return Some(Err(error)),
            }
        }
    }

    /// Pauses every assigned partition and keeps polling, so the member
    /// stays in its group; nothing is committed past unfinished work.
    /// Messages already received stay with the source (they are handed out
    /// after [`resume`](Source::resume)), so nothing is returned.
    async fn pause(&mut self) -> Vec<Delivery> {
        self.dispatcher.hold(true);
        Vec::new()
    }

    async fn resume(&mut self) {
        self.dispatcher.hold(false);
    }

    async fn close(&mut self) {
        self.dlq_depth = None;
        self.dispatcher.close();
        self.thread.stop(self.close_wait).await;
    }
}
