//! [`ParkedReader`]: reads the parked partitions of the main partitions a
//! source owns back to its dispatcher (ordered retries; see
//! [`parking`](crate::parking)).
//!
//! A second consumer on the poll thread, never subscribed and never
//! committing, `read_committed`: it follows the dispatcher's lanes, each
//! from the beginning of its parked partition (the compacted log is the
//! state), again from the beginning when the lane's generation changes (a
//! rebalance, an aborted transaction). A lane is never paused: the `ended`
//! record that releases its waiting copies comes after them. What bounds
//! it is the main partitions' pause (the copies count against the
//! consumer's totals, so no new copies are made while it is over them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::dispatch::{Dispatcher, Lane};
use crate::parking::Parked;
use crate::topic_partition::TopicPartition;
use crate::{Error, KafkaConfig, record};

/// Records read per turn at most.
const BATCH: usize = 1_024;
/// Repeated errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(5);

/// See the [module docs](self).
pub(crate) struct ParkedReader {
    consumer: BaseConsumer,
    /// The lanes read now, by partition.
    following: HashMap<TopicPartition, Lane>,
    group: Arc<str>,
    last_error_log: Option<Instant>,
}

impl std::fmt::Debug for ParkedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedReader")
            .field("following", &self.following.len())
            .finish_non_exhaustive()
    }
}

impl ParkedReader {
    /// A reader with `config`'s connection settings.
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, Error> {
        let consumer: BaseConsumer = config
            .parked_reader_config()
            .create()
            .map_err(Error::Config)?;
        Ok(ParkedReader {
            consumer,
            following: HashMap::new(),
            group: config.group.as_str().into(),
            last_error_log: None,
        })
    }

    /// Follows `lanes`: a new lane, or a lane under a new generation, is
    /// read from its beginning; a lane that is gone is not read any more.
    /// What fails is tried again at the next turn.
    fn sync(&mut self, lanes: &[Lane]) {
        let mut unassign = Vec::new();
        let mut assign = Vec::new();
        for lane in lanes {
            match self.following.get(&lane.tp) {
                Some(known) if known.generation == lane.generation => {}
                Some(_) => {
                    unassign.push(lane.tp.clone());
                    assign.push(lane.clone());
                }
                None => assign.push(lane.clone()),
            }
        }
        for tp in self.following.keys() {
            if !lanes.iter().any(|l| l.tp == *tp) {
                unassign.push(tp.clone());
            }
        }
        if !unassign.is_empty() {
            let mut list = TopicPartitionList::new();
            for tp in &unassign {
                list.add_partition(&tp.topic, tp.partition);
            }
            if let Err(error) = self.consumer.incremental_unassign(&list) {
                tracing::warn!(%error, "the parked-topic reader could not drop partitions; trying again");
                return;
            }
            for tp in &unassign {
                self.following.remove(tp);
            }
        }
        if assign.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for lane in &assign {
            // Only fails for an invalid offset.
            let _ = list.add_partition_offset(&lane.tp.topic, lane.tp.partition, Offset::Beginning);
        }
        match self.consumer.incremental_assign(&list) {
            Ok(()) => {
                for lane in assign {
                    self.following.insert(lane.tp.clone(), lane);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the parked-topic reader could not read partitions; trying again");
            }
        }
    }

    /// Follows the dispatcher's lanes and hands it what arrived on them.
    pub(crate) fn read(&mut self, dispatcher: &Dispatcher) {
        let lanes = dispatcher.lanes();
        self.sync(&lanes);
        if self.following.is_empty() {
            return;
        }
        let mut read: HashMap<TopicPartition, Vec<(i64, Parked)>> = HashMap::new();
        for _ in 0..BATCH {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(r)) => {
                    let Some(lane) = self
                        .following
                        .iter()
                        .find(|(tp, _)| *tp.topic == *r.topic() && tp.partition == r.partition())
                        .map(|(_, lane)| lane)
                    else {
                        continue;
                    };
                    let key = r.key().unwrap_or_default();
                    let mut message = record::guarded_message(&r, &lane.tp.topic, Some(&lane.main));
                    message.meta.group = Some(Arc::clone(&self.group));
                    match Parked::decode(key, r.payload(), message) {
                        Some(parked) => read
                            .entry(lane.tp.clone())
                            .or_default()
                            .push((r.offset(), parked)),
                        None => tracing::warn!(
                            topic = r.topic(),
                            partition = r.partition(),
                            offset = r.offset(),
                            "a record of the parked topic that backstop did not write; skipped"
                        ),
                    }
                }
                Some(Err(error)) => {
                    let now = Instant::now();
                    if self
                        .last_error_log
                        .is_none_or(|t| now - t >= ERROR_LOG_EVERY)
                    {
                        self.last_error_log = Some(now);
                        tracing::warn!(%error, "the parked-topic reader failed to fetch; trying again");
                    }
                    break;
                }
            }
        }
        for (tp, records) in read {
            if let Some(lane) = self.following.get(&tp) {
                dispatcher.lane_read(lane, records);
            }
        }
    }
}
