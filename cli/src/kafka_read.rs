//! Reading a whole Kafka topic (or a small compacted one) from the beginning
//! to the end offsets seen at the start, with manual assignment (no group).

use std::collections::BTreeMap;
use std::time::Duration;

use backstop::Message;
use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use backstop_kafka::rdkafka::message::Message as _;
use backstop_kafka::read::{ReadError, read_to_end};

use crate::error::CliError;

/// How long a metadata or watermark request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer for `brokers` that never commits (its group id is unused).
pub fn reader(brokers: &str) -> Result<BaseConsumer, CliError> {
    crate::kafka_options::client_config(brokers)
        .set("group.id", "backstop-cli-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("auto.offset.reset", "earliest")
        // Bounds librdkafka's prefetch (by default up to 100,000 records or
        // 64 MiB per partition) to 10,000 records or 1 MiB per partition, so
        // a read of a large topic holds little more than the record being
        // handled (a larger record is still fetched, alone).
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.max.bytes", "1048576")
        .create()
        .map_err(CliError::kafka("creating a consumer"))
}

/// The partition count of `topic`, or `None` when it does not exist.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Option<i32>, CliError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(CliError::kafka(format!("reading the metadata of {topic}")))?;
    Ok(backstop_kafka::partition_count(&metadata, topic))
}

/// The message of a record read from a topic: headers, key, meta (topic,
/// partition, offset, timestamp), message id from `x-backstop-message-id`
/// else `<topic>/<partition>/<offset>`.
pub fn to_message<M: backstop_kafka::rdkafka::Message>(record: &M) -> Message {
    backstop_kafka::to_message(record)
}

pub use backstop_kafka::read::IDLE_TIMEOUT;

/// Calls `visit` with every record of `topic` up to the end offsets at the
/// start (blocking), one at a time; `visit` returns `false` to stop early.
/// Gives up when no record arrives for [`IDLE_TIMEOUT`] before the end.
pub fn read_each(
    brokers: &str,
    topic: &str,
    visit: impl FnMut(Message, bool) -> Result<bool, CliError>,
) -> Result<(), CliError> {
    read_from(brokers, topic, &BTreeMap::new(), visit).map(drop)
}

/// [`read_each`] from the offsets in `from` (by partition; a partition not
/// in it, or an offset below the log start, from the log start) to the end
/// offsets at the start, which it returns by partition: where the next
/// read goes on from (an index extended one read at a time).
pub fn read_from(
    brokers: &str,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    mut visit: impl FnMut(Message, bool) -> Result<bool, CliError>,
) -> Result<BTreeMap<i32, i64>, CliError> {
    let consumer = reader(brokers)?;
    let n =
        partitions(&consumer, topic)?.ok_or_else(|| CliError::MissingTopic(topic.to_owned()))?;
    read_to_end(&consumer, topic, n, from, |record| {
        visit(to_message(record), record.payload().is_none())
    })
    .map_err(|error| match error {
        ReadError::Kafka(backstop_kafka::Error::Kafka { what, source }) => CliError::Kafka {
            what,
            reason: source.to_string(),
        },
        ReadError::Kafka(other) => CliError::Kafka {
            what: format!("reading {topic}"),
            reason: other.to_string(),
        },
        ReadError::Stalled => CliError::Kafka {
            what: format!("reading {topic}"),
            reason: format!(
                "no record arrived for {} s before the topic's end",
                IDLE_TIMEOUT.as_secs()
            ),
        },
        ReadError::Visit(error) => error,
    })
}
