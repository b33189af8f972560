//! Reading a topic to its end: from given offsets to the end offsets seen
//! at the start, with manual assignment (no group offsets are read or
//! committed). The replay epoch and the CLI's DLQ walks read this way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::Error;

/// How long a watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read may go without receiving a record before it gives up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why [`read_to_end`] stopped short.
#[derive(Debug)]
pub enum ReadError<E> {
    /// A watermark request, the assignment or a poll failed.
    Kafka(Error),
    /// No record arrived for [`IDLE_TIMEOUT`] before the end.
    Stalled,
    /// The visitor failed.
    Visit(E),
}

/// Calls `visit` with every record of `topic` (of `partitions` partitions)
/// from the offsets in `from` (by partition; a partition not in it, or an
/// offset below the log start, from the log start) to the end offsets at
/// the start, one at a time; `visit` returns `false` to stop early. Returns
/// those end offsets by partition: where a later read goes on from.
/// Blocking: call it off the async runtime ([`blocking`](crate::blocking)).
pub fn read_to_end<E>(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    from: &BTreeMap<i32, i64>,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Result<bool, E>,
) -> Result<BTreeMap<i32, i64>, ReadError<E>> {
    let kafka = |what: String| move |e| ReadError::Kafka(Error::kafka(what)(e));
    let mut ends = BTreeMap::new();
    let mut highs = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(kafka(format!("reading the offsets of {topic}")))?;
        highs.insert(p, high);
        let start = from.get(&p).map_or(low, |&o| o.max(low));
        if high > start {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(kafka("assigning partitions".to_owned()))?;
        }
    }
    if ends.is_empty() {
        return Ok(highs);
    }
    consumer
        .assign(&tpl)
        .map_err(kafka(format!("reading {topic}")))?;
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(ReadError::Stalled);
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                deadline = Instant::now() + IDLE_TIMEOUT;
                let (p, o) = (record.partition(), record.offset());
                if !visit(&record).map_err(ReadError::Visit)? {
                    return Ok(highs);
                }
                if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => return Err(kafka(format!("reading {topic}"))(e)),
            None => {
                // Gaps at the end (transaction markers, compaction): trust the position.
                if let Ok(position) = consumer.position() {
                    for e in position.elements() {
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
