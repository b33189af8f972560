//! The DLQ depth poller: how many letters wait in a source's DLQ topics,
//! read on an interval by a thread of its own.
//!
//! A Kafka topic cannot forget a record, so what `backstop dlq` replayed or
//! purged is recorded in the DLQ's compacted state topic
//! ([`dlq_state_topic`](crate::dlq_state_topic), one record per letter
//! handled). The depth is the DLQ's records (its high watermark less its
//! low one, over its partitions; DLQ topics never expire) less the state
//! topic's records, never below 0: `backstop_dlq_depth{dlq}`, labelled
//! `source` (the main topics joined with `,`) and `group`. Two requests per
//! topic and partition (metadata, watermarks), no read of a record.
//!
//! It is exact while each letter was written once and handled once. It
//! counts one too many for a letter written twice (a DLQ write retried
//! after it was not confirmed: `backstop dlq list` shows one letter) and
//! one too few for a letter recorded twice (a redrive rerun after a crash
//! between its copy and its record, or a letter imported back); an exact
//! count means reading both topics, which `backstop dlq list` does.
//!
//! A broker that does not answer, or a DLQ that does not exist yet, leaves
//! the gauge at its last reading. The thread ends with its source.

use std::sync::mpsc;
use std::time::Duration;

use backstop::metrics::{DLQ_DEPTH, consumer_labels};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{Error, KafkaConfig, dlq_state_topic};

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The running DLQ depth poller; the thread ends when this is dropped.
#[derive(Debug)]
pub(crate) struct DlqDepth {
    _stop: mpsc::Sender<()>,
}

impl DlqDepth {
    /// Reads the depth of each of `dlqs` every `config.metrics_interval`,
    /// the first time at once.
    pub(crate) fn start(
        config: &KafkaConfig,
        topics: &[&str],
        dlqs: &[String],
    ) -> Result<Self, Error> {
        backstop::metrics::describe();
        let consumer: BaseConsumer = config.consumer_config().create().map_err(Error::Config)?;
        let source = topics.join(",");
        let watched: Vec<(String, metrics::Gauge)> = dlqs
            .iter()
            .map(|dlq| {
                let labels = consumer_labels(&source, &config.group, &[("dlq", dlq)]);
                (dlq.clone(), metrics::gauge!(DLQ_DEPTH, labels))
            })
            .collect();
        let every = config.metrics_interval;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("backstop-kafka-dlq-depth".into())
            .spawn(move || {
                loop {
                    for (dlq, gauge) in &watched {
                        // A state topic that cannot be read (a timeout, no
                        // access) is not "nothing redriven": keep the last reading.
                        if let Ok(Some(letters)) = records(&consumer, dlq)
                            && let Ok(done) = records(&consumer, &dlq_state_topic(dlq))
                        {
                            gauge.set(letters.saturating_sub(done.unwrap_or(0)) as f64);
                        }
                    }
                    if !matches!(
                        stopped.recv_timeout(every),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            })
            .map_err(Error::Thread)?;
        Ok(DlqDepth { _stop: stop })
    }
}

/// The records `topic` holds (high less low watermark, over its
/// partitions), or `None` if it does not exist or the broker did not answer.
/// The records `topic` holds: `Ok(None)` when it does not exist, `Err`
/// when it could not be read.
fn records(consumer: &BaseConsumer, topic: &str) -> Result<Option<u64>, ()> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|error| tracing::debug!(%error, topic, "DLQ depth: no metadata"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(error) = found.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(error);
        tracing::debug!(%code, topic, "DLQ depth: topic not readable");
        return match code {
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
            _ => Err(()),
        };
    }
    if found.partitions().is_empty() {
        return Ok(None);
    }
    let mut total = 0u64;
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
            .map_err(|error| tracing::debug!(%error, topic, "DLQ depth: no watermarks"))?;
        total += u64::try_from(high - low).unwrap_or(0);
    }
    Ok(Some(total))
}
