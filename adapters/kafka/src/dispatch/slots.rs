//! The dispatcher's state under its lock: the slot table of tracked
//! partitions ([`Slot`]: a partition's tracker, its generation and its
//! revoke token), the queue of ready messages, and the limits and counters
//! the dispatcher checks. Partitions live in slots, so the hot paths (take,
//! settle) index a vector instead of hashing a topic name; a slot's
//! generation guards its reuse.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use backstop::runner::SourceError;
use backstop::{CancellationToken, Message};

use super::ordered::{Ordered, Parking};
use crate::topic_partition::TopicPartition;
use crate::tracker::PartitionTracker;
use crate::transaction::Pending;

#[derive(Debug)]
pub(super) struct Queued {
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) offset: i64,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) tp: TopicPartition,
    pub(super) tracker: PartitionTracker,
    /// Cancelled when the partition is revoked: its deliveries' handlers stop.
    pub(super) revoked: Arc<CancellationToken>,
    /// The rewind that created this slot (0: an assignment).
    pub(super) rewound_at: u64,
    /// Ordered retries, on a main partition: its parked keys and its lane.
    pub(super) parking: Option<Box<Parking>>,
    /// On a lane (a parked partition read back): its main partition's slot.
    pub(super) lane_of: Option<usize>,
    /// On a lane: the offsets settled done since the last transaction
    /// (their records are committed without waiting for a watermark).
    pub(super) lane_done: Vec<i64>,
}

/// Partitions live in slots, so the hot paths (take, settle) index a vector
/// instead of hashing a topic name; the generation guards slot reuse.
#[derive(Debug)]
pub(super) struct State {
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) free: Vec<usize>,
    pub(super) index: HashMap<TopicPartition, usize>,
    pub(super) ready: VecDeque<Queued>,
    pub(super) outstanding: usize,
    pub(super) max_in_flight: usize,
    pub(super) max_pending: usize,
    pub(super) max_bytes: usize,
    /// The whole consumer's limits, over every partition.
    pub(super) total_pending: usize,
    pub(super) total_bytes: usize,
    /// Every partition is paused because the totals crossed their limits.
    pub(super) over_budget: bool,
    /// Every partition is paused because the runner stopped consuming (its
    /// breaker is open or paused); the poll thread keeps polling.
    pub(super) held: bool,
    pub(super) next_generation: u64,
    /// Partitions revoked and not assigned again: their late messages are dropped.
    pub(super) revoked: HashSet<TopicPartition>,
    pub(super) closed: bool,
    pub(super) errors: VecDeque<SourceError>,
    /// Messages settled done, for the poll thread to drop: it allocated
    /// them, and glibc frees a block without a lock only on the thread
    /// that allocated it.
    pub(super) freed: Vec<Arc<Message>>,
    /// Exactly-once mode: what the deliveries produced, per partition
    /// generation (see [`transaction`](crate::transaction)).
    pub(super) pending: Option<Arc<Pending>>,
    /// Deliveries settled done since the last transaction.
    pub(super) settled: usize,
    /// Ordered retries (see [`parking`](crate::parking)), when on.
    pub(super) ordered: Option<Ordered>,
}

impl State {
    /// An empty table: at most `max_in_flight` unsettled deliveries, per
    /// partition at most `max_pending` messages and `max_bytes` held, and
    /// over every partition `total_pending` and `total_bytes`.
    pub(super) fn new(
        max_in_flight: usize,
        (max_pending, max_bytes): (usize, usize),
        (total_pending, total_bytes): (usize, usize),
    ) -> Self {
        State {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            ready: VecDeque::new(),
            outstanding: 0,
            max_in_flight: max_in_flight.max(1),
            max_pending: max_pending.max(2),
            max_bytes: max_bytes.max(2),
            total_pending: total_pending.max(2),
            total_bytes: total_bytes.max(2),
            over_budget: false,
            held: false,
            next_generation: 0,
            revoked: HashSet::new(),
            closed: false,
            errors: VecDeque::new(),
            freed: Vec::new(),
            pending: None,
            settled: 0,
            ordered: None,
        }
    }

    pub(super) fn insert(&mut self, tp: TopicPartition, delayed: bool) -> usize {
        self.remove(&tp);
        self.revoked.remove(&tp);
        let i = self.track(tp.clone(), delayed, None);
        if !delayed {
            self.open_lane(i, &tp);
        }
        i
    }

    /// A slot for `tp` under a new generation.
    pub(super) fn track(
        &mut self,
        tp: TopicPartition,
        delayed: bool,
        lane_of: Option<usize>,
    ) -> usize {
        self.next_generation += 1;
        let slot = Slot {
            tp: tp.clone(),
            tracker: match lane_of {
                Some(_) => PartitionTracker::lane(self.next_generation),
                None => PartitionTracker::new(self.next_generation, delayed),
            },
            revoked: Arc::new(CancellationToken::new()),
            rewound_at: 0,
            parking: None,
            lane_of,
            lane_done: Vec::new(),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        if let Some(pending) = &self.pending {
            pending.assign(tp.clone(), self.next_generation);
        }
        self.index.insert(tp, i);
        i
    }

    pub(super) fn remove(&mut self, tp: &TopicPartition) -> Option<PartitionTracker> {
        let i = self.index.remove(tp)?;
        let slot = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        slot.revoked.cancel();
        if let Some(pending) = &self.pending {
            pending.forget(tp);
        }
        if let Some(parking) = &slot.parking {
            self.close_lane(parking);
        }
        Some(slot.tracker)
    }

    pub(super) fn live(&mut self, slot: usize, generation: u64) -> Option<&mut PartitionTracker> {
        self.slots
            .get_mut(slot)?
            .as_mut()
            .map(|s| &mut s.tracker)
            .filter(|t| t.generation() == generation)
    }

    pub(super) fn by_tp(&mut self, tp: &TopicPartition) -> Option<&mut PartitionTracker> {
        let i = *self.index.get(tp)?;
        self.slots.get_mut(i)?.as_mut().map(|s| &mut s.tracker)
    }

    /// Each partition's offset to commit, where it moved since the last
    /// commit (the group's partitions, not the lanes).
    pub(super) fn to_commit(&self) -> Vec<(TopicPartition, i64)> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.lane_of.is_none())
            .filter_map(|s| s.tracker.to_commit().map(|o| (s.tp.clone(), o)))
            .collect()
    }

    /// Drops queued messages of a generation that is gone (revoked, rewound).
    pub(super) fn forget_stale_ready(&mut self) {
        let State { slots, ready, .. } = self;
        ready.retain(|q| {
            slots
                .get(q.slot)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.tracker.generation() == q.generation)
        });
    }

    /// Messages tracked and bytes held, over every partition.
    pub(super) fn totals(&self) -> (usize, usize) {
        self.slots.iter().flatten().fold((0, 0), |(n, b), s| {
            (n + s.tracker.len(), b + s.tracker.bytes())
        })
    }

    /// True when the totals reached the consumer's limits.
    pub(super) fn over(&self, (n, b): (usize, usize)) -> bool {
        n >= self.total_pending || b >= self.total_bytes
    }

    /// Pauses every partition not paused yet (appended to `pause`).
    pub(super) fn pause_all(&mut self, pause: &mut Vec<TopicPartition>) {
        for (_, slot) in self.slots_mut() {
            if slot.lane_of.is_none() && !slot.tracker.is_paused() {
                slot.tracker.set_paused(true);
                pause.push(slot.tp.clone());
            }
        }
    }

    pub(super) fn slots_mut(&mut self) -> impl Iterator<Item = (usize, &mut Slot)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|s| (i, s)))
    }
}
