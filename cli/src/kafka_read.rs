//! Reading a whole Kafka topic (or a small compacted one) from the beginning
//! to the end offsets seen at the start, with manual assignment (no group).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backstop::Message;
use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use backstop_kafka::rdkafka::message::Message as _;
use backstop_kafka::rdkafka::{Offset, TopicPartitionList};

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

/// How long a read may go without receiving a record before it gives up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Every record of `topic` up to the end offsets at the start, in partition
/// order (blocking; call it in `spawn_blocking`). Tombstones (no payload)
/// are returned with an empty payload and `tombstone` set in the second field.
/// Holds the whole topic: for small (compacted) topics; see [`read_each`].
pub fn read_all(brokers: &str, topic: &str) -> Result<Vec<(Message, bool)>, CliError> {
    let mut out = Vec::new();
    read_each(brokers, topic, |m, tombstone| {
        out.push((m, tombstone));
        Ok(true)
    })?;
    Ok(out)
}

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
    let mut ends = BTreeMap::new();
    let mut highs = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(CliError::kafka(format!("reading the offsets of {topic}")))?;
        highs.insert(p, high);
        let start = from.get(&p).map_or(low, |&o| o.max(low));
        if high > start {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(CliError::kafka("assigning partitions"))?;
        }
    }
    if ends.is_empty() {
        return Ok(highs);
    }
    consumer
        .assign(&tpl)
        .map_err(CliError::kafka(format!("reading {topic}")))?;
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(CliError::Kafka {
                what: format!("reading {topic}"),
                reason: format!(
                    "no record arrived for {} s before the topic's end",
                    IDLE_TIMEOUT.as_secs()
                ),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                deadline = Instant::now() + IDLE_TIMEOUT;
                let (p, o) = (record.partition(), record.offset());
                let tombstone = record.payload().is_none();
                if !visit(to_message(&record), tombstone)? {
                    return Ok(highs);
                }
                if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => return Err(CliError::kafka(format!("reading {topic}"))(e)),
            None => {
                // Gaps at the end (transaction markers, compaction): trust the position.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let Offset::Offset(o) = e.offset()
                            && ends.get(&e.partition()).is_some_and(|end| o >= *end)
                        {
                            ends.remove(&e.partition());
                        }
                    }
                }
            }
        }
    }
    Ok(highs)
}
