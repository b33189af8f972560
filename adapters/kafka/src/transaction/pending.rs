//! [`Pending`]: what each delivery produced (records to write, idempotency
//! marks to write after the commit), kept beside it until a transaction
//! covers its offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use backstop::Message;
use backstop::error::SinkError;
use backstop::idempotency::HeldMarks;
use backstop::publish::PublishError;
use backstop::transaction::Transaction;

use crate::topic_partition::TopicPartition;

/// One record of a transaction.
#[derive(Debug)]
pub(crate) struct Record {
    /// The topic.
    pub(crate) destination: String,
    /// The partition, when the record must go to one (the parked topic's
    /// records go to their main partition's); else the partitioner's.
    pub(crate) partition: Option<i32>,
    pub(crate) message: Message,
    /// A record without a value: it deletes its key from a compacted topic.
    pub(crate) tombstone: bool,
    /// Dropped (logged) instead of aborting the transaction when its
    /// partition does not exist: bookkeeping no delivery depends on.
    pub(crate) optional: bool,
    /// The order it was added in: a transaction writes its records in
    /// that order, whichever deliveries they belong to.
    seq: u64,
}

impl Record {
    /// A record for `destination`, partitioned by its key.
    pub(crate) fn to(destination: impl Into<String>, message: Message) -> Self {
        Record {
            destination: destination.into(),
            partition: None,
            message,
            tombstone: false,
            optional: false,
            seq: 0,
        }
    }
}

/// What one delivery produced.
#[derive(Debug, Default)]
pub(crate) struct Produced {
    generation: u64,
    /// In the order produced.
    pub(crate) records: Vec<Record>,
    pub(crate) marks: Vec<HeldMarks>,
}

/// What the deliveries below a set of watermarks produced, taken out for
/// one transaction.
#[derive(Debug, Default)]
pub(crate) struct Covered {
    pub(crate) records: Vec<Record>,
    pub(crate) marks: Vec<HeldMarks>,
}

/// Partitions by name (foldhash, as the dispatcher's keys: two lookups per
/// settled message).
type ByPartition<V> = HashMap<TopicPartition, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct State {
    /// The generation of each partition this source owns now (the
    /// dispatcher's: a revoke or a rewind ends it).
    live: ByPartition<u64>,
    /// Per partition, per offset.
    produced: ByPartition<BTreeMap<i64, Produced>>,
    /// Records of no delivery, each for a partition generation, for the
    /// next transaction while that generation is owned (the parked topic's
    /// load markers and clean-ups).
    loose: Vec<(TopicPartition, u64, Record)>,
    /// The next record's [`Record::seq`].
    next_seq: u64,
}

/// `record`, numbered as the next one added.
fn numbered(next_seq: &mut u64, mut record: Record) -> Record {
    *next_seq += 1;
    record.seq = *next_seq;
    record
}

/// The records and marks of a source's deliveries, waiting for the
/// transaction that covers them; shared by the deliveries (through
/// [`DeliverySlot`]), the dispatcher and the poll thread's [`Transactor`](super::Transactor).
#[derive(Debug)]
pub(crate) struct Pending {
    state: Mutex<State>,
    /// The largest record the producer sends (`message.max.bytes`): a
    /// larger one is refused at once, for good, instead of aborting every
    /// transaction that would hold it.
    max_record_bytes: usize,
}

impl Default for Pending {
    fn default() -> Self {
        Pending::limited(usize::MAX)
    }
}

impl Pending {
    /// Refusing records over `max_record_bytes`.
    pub(crate) fn limited(max_record_bytes: usize) -> Self {
        Pending {
            state: Mutex::default(),
            max_record_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partition is owned from now on under `generation`.
    pub(crate) fn assign(&self, tp: TopicPartition, generation: u64) {
        let dropped = {
            let mut st = self.lock();
            st.live.insert(tp.clone(), generation);
            st.produced.remove(&tp)
        };
        drop(dropped);
    }

    /// The partition is no longer owned under its generation (revoked, or
    /// rewound): what its deliveries produced is dropped (their marks
    /// release their leases without counting).
    pub(crate) fn forget(&self, tp: &TopicPartition) {
        let dropped = {
            let mut st = self.lock();
            st.live.remove(tp);
            st.produced.remove(tp)
        };
        drop(dropped);
    }

    /// A delivery was put back to run again (a nack, a dropped delivery):
    /// what it produced is dropped; its next run produces it again.
    pub(crate) fn discard(&self, tp: &TopicPartition, offset: i64) {
        let dropped = self
            .lock()
            .produced
            .get_mut(tp)
            .and_then(|by_offset| by_offset.remove(&offset));
        drop(dropped);
    }

    /// True when the producer can send `record` (its size within
    /// `message.max.bytes`).
    pub(crate) fn fits(&self, record: &Record) -> bool {
        record_size(&record.message) <= self.max_record_bytes
    }

    /// Adds `records` to the delivery at `offset` of `tp`, if `tp` is still
    /// owned under `generation`; false if not (nothing added).
    pub(crate) fn append(
        &self,
        tp: &TopicPartition,
        generation: u64,
        offset: i64,
        records: impl IntoIterator<Item = Record>,
    ) -> bool {
        self.add(tp, generation, offset, records, None)
    }

    /// [`append`](Self::append), with idempotency marks too (refused marks
    /// are dropped, which releases their leases).
    fn add(
        &self,
        tp: &TopicPartition,
        generation: u64,
        offset: i64,
        records: impl IntoIterator<Item = Record>,
        marks: Option<HeldMarks>,
    ) -> bool {
        let mut st = self.lock();
        if st.live.get(tp) != Some(&generation) {
            return false;
        }
        let State {
            produced, next_seq, ..
        } = &mut *st;
        let produced = produced
            .entry(tp.clone())
            .or_default()
            .entry(offset)
            .or_insert_with(|| Produced {
                generation,
                ..Produced::default()
            });
        debug_assert_eq!(produced.generation, generation);
        produced
            .records
            .extend(records.into_iter().map(|r| numbered(next_seq, r)));
        produced.marks.extend(marks);
        true
    }

    /// Calls `f` on the records the delivery at `offset` of `tp` produced
    /// so far (none: an empty slice).
    pub(crate) fn inspect<R>(
        &self,
        tp: &TopicPartition,
        offset: i64,
        f: impl FnOnce(&mut [Record]) -> R,
    ) -> R {
        let mut st = self.lock();
        match st
            .produced
            .get_mut(tp)
            .and_then(|by_offset| by_offset.get_mut(&offset))
        {
            Some(produced) => f(&mut produced.records),
            None => f(&mut []),
        }
    }

    /// Adds records of no delivery to the next transaction, if `tp` is
    /// still owned under `generation` then (else they are dropped).
    pub(crate) fn add_loose(
        &self,
        tp: &TopicPartition,
        generation: u64,
        records: impl IntoIterator<Item = Record>,
    ) {
        let mut st = self.lock();
        let State {
            loose, next_seq, ..
        } = &mut *st;
        loose.extend(
            records
                .into_iter()
                .map(|r| (tp.clone(), generation, numbered(next_seq, r))),
        );
    }

    /// True when records of no delivery wait for a transaction.
    pub(crate) fn has_loose(&self) -> bool {
        !self.lock().loose.is_empty()
    }

    /// Takes out what the deliveries below each partition's watermark
    /// produced, and those at exactly the offsets of `done` (the lanes,
    /// whose records do not wait for a watermark: see
    /// [`parking`](crate::parking)), for the transaction that commits
    /// them, with the records of no delivery whose partition generation is
    /// still owned; all in the order they were added.
    pub(crate) fn take_covered(
        &self,
        watermarks: &[(TopicPartition, i64)],
        done: &[(TopicPartition, Vec<i64>)],
    ) -> Covered {
        let mut covered = Covered::default();
        let mut st = self.lock();
        let loose = std::mem::take(&mut st.loose);
        for (tp, generation, record) in loose {
            if st.live.get(&tp) == Some(&generation) {
                covered.records.push(record);
            }
        }
        for (tp, offsets) in done {
            let Some(by_offset) = st.produced.get_mut(tp) else {
                continue;
            };
            for offset in offsets {
                if let Some(produced) = by_offset.remove(offset) {
                    covered.records.extend(produced.records);
                    covered.marks.extend(produced.marks);
                }
            }
        }
        for (tp, watermark) in watermarks {
            let Some(by_offset) = st.produced.get_mut(tp) else {
                continue;
            };
            let rest = by_offset.split_off(watermark);
            for produced in std::mem::replace(by_offset, rest).into_values() {
                covered.records.extend(produced.records);
                covered.marks.extend(produced.marks);
            }
        }
        covered.records.sort_by_key(|r| r.seq);
        covered
    }

    /// Messages whose records or marks wait for a transaction.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().produced.values().map(BTreeMap::len).sum()
    }
}

/// What a record counts for against the producer's `message.max.bytes`,
/// on the safe side: payload, key, headers with their lengths, the message
/// id header the record gets, and the record's own overhead.
fn record_size(message: &Message) -> usize {
    const RECORD_OVERHEAD: usize = 64;
    const PER_HEADER: usize = 10;
    message.payload.len()
        + message.key.as_ref().map_or(0, |k| k.len())
        + message.headers.wire_len()
        + PER_HEADER * (message.headers.len() + 1)
        + backstop::wire::MESSAGE_ID.len()
        + message.meta.message_id.len()
        + RECORD_OVERHEAD
}

/// One delivery's place in its source's transaction: the
/// [`Transaction`] the stack sees in the delivery.
#[derive(Debug)]
pub(crate) struct DeliverySlot {
    pub(crate) pending: Arc<Pending>,
    pub(crate) tp: TopicPartition,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

impl Transaction for DeliverySlot {
    fn produce(&self, destination: &str, message: Message) -> Result<(), SinkError> {
        self.produce_all(vec![(destination.to_owned(), message)])
    }

    fn admits(&self, destination: &str, message: &Message) -> Result<(), SinkError> {
        let size = record_size(message);
        if size > self.pending.max_record_bytes {
            return Err(SinkError::Publish {
                destination: destination.to_owned(),
                source: PublishError::TooLarge { size },
            });
        }
        Ok(())
    }

    fn produce_all(&self, records: Vec<(String, Message)>) -> Result<(), SinkError> {
        for (destination, message) in &records {
            self.admits(destination, message)?;
        }
        let destination = records.first().map(|(d, _)| d.clone()).unwrap_or_default();
        let records = records.into_iter().map(|(d, m)| Record::to(d, m));
        if self
            .pending
            .append(&self.tp, self.generation, self.offset, records)
        {
            return Ok(());
        }
        Err(SinkError::Publish {
            destination,
            source: PublishError::Unavailable(
                format!(
                    "{}[{}] was revoked or rewound since offset {} was delivered; its next owner runs it again",
                    self.tp.topic, self.tp.partition, self.offset
                )
                .into(),
            ),
        })
    }

    fn hold(&self, marks: HeldMarks) {
        // Refused (a revoked or rewound partition): dropped, which
        // releases the leases.
        self.pending
            .add(&self.tp, self.generation, self.offset, [], Some(marks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("orders", p)
    }

    fn slot(pending: &Arc<Pending>, p: i32, generation: u64, offset: i64) -> DeliverySlot {
        DeliverySlot {
            pending: Arc::clone(pending),
            tp: tp(p),
            generation,
            offset,
        }
    }

    #[test]
    fn only_records_below_the_watermark_are_taken_in_the_order_they_were_made() {
        let pending = Arc::new(Pending::default());
        pending.assign(tp(0), 1);
        pending.assign(tp(1), 1);
        for offset in [5, 3, 9] {
            slot(&pending, 0, 1, offset)
                .produce("dlq", Message::new(offset.to_string()))
                .expect("owned");
        }
        slot(&pending, 1, 1, 0)
            .produce("out", Message::new("p1"))
            .expect("owned");
        let covered = pending.take_covered(&[(tp(0), 6)], &[]);
        let bodies: Vec<&[u8]> = covered
            .records
            .iter()
            .map(|r| &r.message.payload[..])
            .collect();
        assert_eq!(bodies, [b"5".as_slice(), b"3"]);
        assert_eq!(pending.waiting(), 2, "offset 9 and partition 1 wait");
        assert!(pending.take_covered(&[(tp(0), 6)], &[]).records.is_empty());
    }

    #[test]
    fn a_record_over_the_producers_limit_is_refused_for_good_at_once() {
        let pending = Arc::new(Pending::limited(1_000));
        pending.assign(tp(0), 1);
        let refused = slot(&pending, 0, 1, 0)
            .produce("dlq", Message::new(vec![b'x'; 1_000]))
            .expect_err("too large");
        assert!(refused.is_permanent(), "{refused}");
        assert_eq!(pending.waiting(), 0);
        assert!(
            slot(&pending, 0, 1, 0)
                .produce("dlq", Message::new(vec![b'x'; 500]))
                .is_ok()
        );
        // An attempt's publishes join together or not at all.
        let batch = vec![
            ("out".to_owned(), Message::new("small")),
            ("out".to_owned(), Message::new(vec![b'x'; 1_000])),
        ];
        assert!(slot(&pending, 0, 1, 1).produce_all(batch).is_err());
        assert_eq!(pending.waiting(), 1, "only offset 0's record");
    }

    #[test]
    fn a_revoked_rewound_or_requeued_delivery_produces_nothing() {
        let pending = Arc::new(Pending::default());
        pending.assign(tp(0), 1);
        slot(&pending, 0, 1, 4)
            .produce("dlq", Message::new("a"))
            .expect("owned");
        pending.discard(&tp(0), 4);
        assert_eq!(pending.waiting(), 0, "a nack drops what it produced");
        slot(&pending, 0, 1, 5)
            .produce("dlq", Message::new("b"))
            .expect("owned");
        // Rewound: a new generation; the old one's deliveries are refused.
        pending.assign(tp(0), 2);
        assert_eq!(pending.waiting(), 0);
        let late = slot(&pending, 0, 1, 6).produce("dlq", Message::new("late"));
        assert!(late.is_err(), "a delivery of the old generation is refused");
        assert!(!late.expect_err("refused").is_permanent());
        pending.forget(&tp(0));
        assert!(
            slot(&pending, 0, 2, 6)
                .produce("dlq", Message::new("x"))
                .is_err()
        );
    }
}
