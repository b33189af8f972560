//! The replay epoch of a consumer group on a topic, for
//! `backstop replay --mode reprocess`.
//!
//! Offsets are reset and messages are not rewritten, so deduplication would
//! skip every message already done. `reprocess` therefore [`bump`]s an
//! epoch kept in the compacted topic `<topic>.<group>.epoch`
//! ([`epoch_topic`]; key `epoch`, value the decimal epoch); a worker reads
//! it at start with [`current`] and wraps its idempotency store in
//! [`backstop::idempotency::Namespaced`] with the namespace
//! `epoch-<epoch>`, so keys of the new epoch are new and every message runs
//! again. The order of a stored key is fixed: store wrappers outermost
//! (`epoch-<epoch>:`), then the consumer's keyspace that the idempotency
//! layer adds (`<topic>#<group>:`, see [`backstop::idempotency::Keyspace`]),
//! then the key: `epoch-3:orders#billing:order-42`.

use std::collections::BTreeMap;
use std::time::Duration;

use backstop::Message;
use backstop::publish::{PublishError, Publisher as _};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::blocking::blocking;
use crate::names::epoch_topic;
use crate::read::{IDLE_TIMEOUT, ReadError, read_to_end};
use crate::{Error, KafkaConfig, KafkaPublisher, TopicSpec, Topics, partition_count};

/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure to read or bump a replay epoch.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The epoch topic could not be read.
    #[error("reading the replay epoch from {topic}: {source}")]
    Read {
        /// The epoch topic.
        topic: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// The epoch topic was not read to its end: no record arrived for a minute.
    #[error("reading {topic}: no record arrived for {} s before the topic's end", IDLE_TIMEOUT.as_secs())]
    Stalled {
        /// The epoch topic.
        topic: String,
    },
    /// The epoch topic could not be created.
    #[error("creating the epoch topic {topic}: {source}")]
    Create {
        /// The epoch topic.
        topic: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// No producer could be made to write the new epoch.
    #[error("creating a producer: {0}")]
    Producer(#[source] Error),
    /// The new epoch was not written (it was not confirmed).
    #[error("writing epoch {epoch} to {topic}: {source}")]
    Write {
        /// The epoch topic.
        topic: String,
        /// The epoch that was not written.
        epoch: u64,
        /// Why.
        #[source]
        source: PublishError,
    },
}

/// The current replay epoch of `config.group` on `topic` (0 when never
/// bumped): the largest epoch its epoch topic holds.
pub async fn current(config: &KafkaConfig, topic: &str) -> Result<u64, EpochError> {
    let name = epoch_topic(topic, &config.group);
    let reader = config.clone();
    let read = {
        let name = name.clone();
        blocking(move || read_all(&reader, &name)).await
    };
    let records = match read {
        Ok(Some(records)) => records,
        Ok(None) => return Ok(0),
        Err(Read::Failed(source)) => {
            return Err(EpochError::Read {
                topic: name,
                source,
            });
        }
        Err(Read::Stalled) => return Err(EpochError::Stalled { topic: name }),
    };
    Ok(records
        .iter()
        .filter_map(|payload| {
            std::str::from_utf8(payload)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0))
}

/// Bumps the replay epoch of `config.group` on `topic` (creating the
/// compacted epoch topic on first use); returns the new epoch.
pub async fn bump(config: &KafkaConfig, topic: &str) -> Result<u64, EpochError> {
    let next = current(config, topic).await? + 1;
    let name = epoch_topic(topic, &config.group);
    let created = match Topics::new(config) {
        Ok(topics) => {
            topics
                .create(&[TopicSpec::new(&name).config("cleanup.policy", "compact")])
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(source) = created {
        return Err(EpochError::Create {
            topic: name,
            source,
        });
    }
    let publisher = KafkaPublisher::new(config).map_err(EpochError::Producer)?;
    publisher
        .publish(&name, &Message::new(next.to_string()).with_key("epoch"))
        .await
        .map_err(|source| EpochError::Write {
            topic: name.clone(),
            epoch: next,
            source,
        })?;
    Ok(next)
}

/// Why a read of the epoch topic ended early.
#[derive(Debug)]
enum Read {
    Failed(Error),
    Stalled,
}

impl From<Error> for Read {
    fn from(error: Error) -> Self {
        Read::Failed(error)
    }
}

impl From<tokio::task::JoinError> for Read {
    fn from(error: tokio::task::JoinError) -> Self {
        Read::Failed(error.into())
    }
}

/// The payload of every record of `topic` up to the end offsets at the
/// start (tombstones as empty payloads), with manual assignment (no group
/// offsets are read or committed); `None` when the topic does not exist.
/// Blocking.
fn read_all(config: &KafkaConfig, topic: &str) -> Result<Option<Vec<Vec<u8>>>, Read> {
    let mut client = config.offsets_reader_config();
    client
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = client.create().map_err(Error::Config)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
    let Some(partitions) = partition_count(&metadata, topic) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    read_to_end(&consumer, topic, partitions, &BTreeMap::new(), |record| {
        out.push(record.payload().unwrap_or_default().to_vec());
        Ok::<_, std::convert::Infallible>(true)
    })
    .map_err(|error| match error {
        ReadError::Kafka(error) => Read::Failed(error),
        ReadError::Stalled => Read::Stalled,
        ReadError::Visit(never) => match never {},
    })?;
    Ok(Some(out))
}
