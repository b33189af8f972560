//! The dispatcher: the state shared by the poll thread, the source and the
//! ackers. It holds one [`PartitionTracker`] per assigned partition and the
//! queue of messages ready to be handed out.
//!
//! The poll thread adds what it receives; [`KafkaSource::next`](crate::KafkaSource)
//! takes from the ready queue (at most `max_in_flight` unsettled at once);
//! ackers settle. A revoked partition's tracker is removed at once, which
//! fences it: its queued messages are skipped, late settlements are
//! refused as stale (the new owner gets those messages again), the
//! cancellation tokens of its handed-out deliveries fire (their handlers
//! stop), and messages of it that the poll thread collected before the
//! revoke are dropped, never tracked under a new tracker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use backstop::{CancellationToken, Message, SourceError};
use tokio::sync::Notify;

use crate::tracker::{PartitionTracker, Received};
use crate::transaction::Pending;

mod ordered;

use self::ordered::Parking;
pub(crate) use self::ordered::{Lane, Ordered, ParkedNow};

/// A topic and partition.
pub(crate) type Tp = (Arc<str>, i32);

/// What the poll thread should do to a partition after a change.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    /// Partitions to pause.
    pub(crate) pause: Vec<Tp>,
    /// Partitions to resume.
    pub(crate) resume: Vec<Tp>,
    /// Offsets to store (last done + 1).
    pub(crate) store: Vec<(Tp, i64)>,
    /// Idle partitions whose watermark may advance to the consumer's position.
    pub(crate) idle: Vec<Tp>,
}

impl Actions {
    /// True when there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.pause.is_empty()
            && self.resume.is_empty()
            && self.store.is_empty()
            && self.idle.is_empty()
    }
}

/// One message received by the poll thread, to be tracked.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) tp: Tp,
    pub(crate) message: Message,
    pub(crate) due: Option<SystemTime>,
    pub(crate) delayed: bool,
    /// The dispatcher's rewind count when the message was polled: a
    /// message polled before its partition was rewound is dropped (the
    /// consumer reads it again from the rewound offset).
    pub(crate) epoch: u64,
}

#[derive(Debug)]
struct Queued {
    slot: usize,
    generation: u64,
    offset: i64,
}

#[derive(Debug)]
struct Slot {
    tp: Tp,
    tracker: PartitionTracker,
    /// Cancelled when the partition is revoked: its deliveries' handlers stop.
    revoked: CancellationToken,
    /// The rewind that created this slot (0: an assignment).
    rewound_at: u64,
    /// Ordered retries, on a main partition: its parked keys and its lane.
    parking: Option<Box<Parking>>,
    /// On a lane (a parked partition read back): its main partition's slot.
    lane_of: Option<usize>,
    /// On a lane: the offsets settled done since the last transaction
    /// (their records are committed without waiting for a watermark).
    lane_done: Vec<i64>,
}

/// Partitions live in slots, so the hot paths (take, settle) index a vector
/// instead of hashing a topic name; the generation guards slot reuse.
#[derive(Debug)]
pub(crate) struct State {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    index: HashMap<Tp, usize>,
    ready: VecDeque<Queued>,
    outstanding: usize,
    max_in_flight: usize,
    max_pending: usize,
    max_bytes: usize,
    /// The whole consumer's limits, over every partition.
    total_pending: usize,
    total_bytes: usize,
    /// Every partition is paused because the totals crossed their limits.
    over_budget: bool,
    /// Every partition is paused because the runner stopped consuming (its
    /// breaker is open or paused); the poll thread keeps polling.
    held: bool,
    next_generation: u64,
    /// Partitions revoked and not assigned again: their late messages are dropped.
    revoked: HashSet<Tp>,
    closed: bool,
    errors: VecDeque<SourceError>,
    /// Messages settled done, for the poll thread to drop: it allocated
    /// them, and glibc frees a block without a lock only on the thread
    /// that allocated it.
    freed: Vec<Arc<Message>>,
    /// Exactly-once mode: what the deliveries produced, per partition
    /// generation (see [`transaction`](crate::transaction)).
    pending: Option<Arc<Pending>>,
    /// Deliveries settled done since the last transaction.
    settled: usize,
    /// Ordered retries (see [`parking`](crate::parking)), when on.
    ordered: Option<Ordered>,
}

impl State {
    fn insert(&mut self, tp: Tp, delayed: bool) -> usize {
        self.remove(&tp);
        self.revoked.remove(&tp);
        let i = self.track(tp.clone(), delayed, None);
        if !delayed {
            self.open_lane(i, &tp);
        }
        i
    }

    /// A slot for `tp` under a new generation.
    fn track(&mut self, tp: Tp, delayed: bool, lane_of: Option<usize>) -> usize {
        self.next_generation += 1;
        let slot = Slot {
            tp: tp.clone(),
            tracker: match lane_of {
                Some(_) => PartitionTracker::lane(self.next_generation),
                None => PartitionTracker::new(self.next_generation, delayed),
            },
            revoked: CancellationToken::new(),
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

    fn remove(&mut self, tp: &Tp) -> Option<PartitionTracker> {
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

    fn live(&mut self, slot: usize, generation: u64) -> Option<&mut PartitionTracker> {
        self.slots
            .get_mut(slot)?
            .as_mut()
            .map(|s| &mut s.tracker)
            .filter(|t| t.generation() == generation)
    }

    fn by_tp(&mut self, tp: &Tp) -> Option<&mut PartitionTracker> {
        let i = *self.index.get(tp)?;
        self.slots.get_mut(i)?.as_mut().map(|s| &mut s.tracker)
    }

    /// Each partition's offset to commit, where it moved since the last
    /// commit (the group's partitions, not the lanes).
    fn to_commit(&self) -> Vec<(Tp, i64)> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.lane_of.is_none())
            .filter_map(|s| s.tracker.to_commit().map(|o| (s.tp.clone(), o)))
            .collect()
    }

    /// Drops queued messages of a generation that is gone (revoked, rewound).
    fn forget_stale_ready(&mut self) {
        let State { slots, ready, .. } = self;
        ready.retain(|q| {
            slots
                .get(q.slot)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.tracker.generation() == q.generation)
        });
    }

    /// Messages tracked and bytes held, over every partition.
    fn totals(&self) -> (usize, usize) {
        self.slots.iter().flatten().fold((0, 0), |(n, b), s| {
            (n + s.tracker.len(), b + s.tracker.bytes())
        })
    }

    /// True when the totals reached the consumer's limits.
    fn over(&self, (n, b): (usize, usize)) -> bool {
        n >= self.total_pending || b >= self.total_bytes
    }

    /// Pauses every partition not paused yet (appended to `pause`).
    fn pause_all(&mut self, pause: &mut Vec<Tp>) {
        for (_, slot) in self.slots_mut() {
            if slot.lane_of.is_none() && !slot.tracker.is_paused() {
                slot.tracker.set_paused(true);
                pause.push(slot.tp.clone());
            }
        }
    }

    fn slots_mut(&mut self) -> impl Iterator<Item = (usize, &mut Slot)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|s| (i, s)))
    }
}

/// What a transaction commits: the group's offsets, and the lanes'
/// deliveries settled done since the last one (their records; see
/// [`parking`](crate::parking)).
#[derive(Debug, Default)]
pub(crate) struct ToCommit {
    pub(crate) offsets: Vec<(Tp, i64)>,
    pub(crate) lanes: Vec<(Tp, Vec<i64>)>,
}

/// A delivery the source hands out: the message and how to settle it.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) message: Arc<Message>,
    pub(crate) ticket: Ticket,
    /// Cancelled when the partition is revoked.
    pub(crate) revoked: CancellationToken,
}

/// What an acker needs to settle its delivery.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) tp: Tp,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

/// Why a settlement was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The partition was revoked (or reassigned) since the delivery.
    Fenced,
    /// The delivery was already settled.
    Settled,
}

/// The shared dispatcher; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    /// Wakes the source's `next`.
    ready: Notify,
    /// Rewinds so far (exactly-once aborts), read by the poll thread for
    /// each message it polls.
    rewinds: std::sync::atomic::AtomicU64,
}

impl Dispatcher {
    /// A dispatcher handing out at most `max_in_flight` unsettled deliveries,
    /// pausing partitions that track more than `max_pending` messages or
    /// hold more than `max_bytes` of unfinished messages.
    #[cfg(test)]
    pub(crate) fn new(max_in_flight: usize, max_pending: usize, max_bytes: usize) -> Arc<Self> {
        Dispatcher::with_totals(
            max_in_flight,
            (max_pending, max_bytes),
            (usize::MAX, usize::MAX),
        )
    }

    /// Like [`Dispatcher::new`] with per-partition limits `partition`
    /// (messages, bytes), and limits over all partitions together, `total`:
    /// when the totals reach them, every partition is paused until the totals
    /// are back to half.
    pub(crate) fn with_totals(
        max_in_flight: usize,
        (max_pending, max_bytes): (usize, usize),
        (total_pending, total_bytes): (usize, usize),
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            state: Mutex::new(State {
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
            }),
            ready: Notify::new(),
            rewinds: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking newly assigned partitions (each gets a new generation).
    pub(crate) fn assign(&self, partitions: impl IntoIterator<Item = (Tp, bool)>) {
        let mut st = self.lock();
        for (tp, delayed) in partitions {
            st.insert(tp, delayed);
        }
    }

    /// Fences revoked partitions; returns the offsets to commit for them.
    pub(crate) fn revoke<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<(Tp, i64)> {
        let mut st = self.lock();
        let mut commit = Vec::new();
        for (topic, partition) in partitions {
            let tp: Tp = (Arc::from(topic), partition);
            st.revoked.insert(tp.clone());
            if let Some(tracker) = st.remove(&tp)
                && let Some(offset) = tracker.to_commit()
            {
                commit.push((tp, offset));
            }
        }
        st.forget_stale_ready();
        commit
    }

    /// Tracks one received message; see [`Dispatcher::receive_all`].
    #[cfg(test)]
    pub(crate) fn receive(
        &self,
        tp: Tp,
        message: Message,
        due: Option<SystemTime>,
        delayed: bool,
    ) -> Option<Tp> {
        let mut pause = Vec::new();
        self.receive_all(
            &mut vec![Incoming {
                tp,
                message,
                due,
                delayed,
                epoch: self.rewind_epoch(),
            }],
            &mut pause,
            &mut Vec::new(),
        );
        pause.pop()
    }

    /// Tracks received messages (under one lock); partitions that now track
    /// too much, or hold a retry that is not due, are appended to `pause`.
    /// The messages settled since the last call are swapped into `freed`
    /// (the poll thread drops them outside the lock).
    pub(crate) fn receive_all(
        &self,
        batch: &mut Vec<Incoming>,
        pause: &mut Vec<Tp>,
        freed: &mut Vec<Arc<Message>>,
    ) {
        let now = batch
            .iter()
            .any(|i| i.due.is_some())
            .then(SystemTime::now)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut woke = false;
        let mut st = self.lock();
        std::mem::swap(&mut st.freed, freed);
        let (max_pending, max_bytes) = (st.max_pending, st.max_bytes);
        let mut totals = st.totals();
        let mut last: Option<(Tp, usize)> = None;
        for incoming in batch.drain(..) {
            let slot = match &last {
                Some((tp, slot)) if *tp == incoming.tp => *slot,
                _ => {
                    let slot = match st.index.get(&incoming.tp) {
                        Some(&slot) => slot,
                        // Polled before the partition was revoked: never
                        // handed out after it (the new owner reads it again).
                        None if st.revoked.contains(&incoming.tp) => continue,
                        // A message before its assignment was seen: track it anyway.
                        None => st.insert(incoming.tp.clone(), incoming.delayed),
                    };
                    last = Some((incoming.tp.clone(), slot));
                    slot
                }
            };
            let over_budget = st.over_budget;
            let Some(Slot {
                tracker,
                rewound_at,
                ..
            }) = st.slots.get_mut(slot).and_then(Option::as_mut)
            else {
                continue;
            };
            // Polled before its partition was rewound: read again from the
            // rewound offset, never tracked ahead of it.
            if *rewound_at > incoming.epoch {
                continue;
            }
            let generation = tracker.generation();
            let offset = incoming.message.meta.offset.unwrap_or_default();
            let before = (tracker.len(), tracker.bytes());
            let received = tracker.receive(incoming.message, incoming.due, now);
            totals.0 += tracker.len().saturating_sub(before.0);
            totals.1 += tracker.bytes().saturating_sub(before.1);
            // Over the consumer's budget, a partition assigned since it was
            // reached is paused on its first message.
            if !tracker.is_paused()
                && (over_budget
                    || tracker.len() >= max_pending
                    || tracker.bytes() >= max_bytes
                    || (tracker.is_delayed() && tracker.not_due() > 0))
            {
                tracker.set_paused(true);
                pause.push(incoming.tp);
            }
            if !over_budget && st.over(totals) {
                st.over_budget = true;
                st.pause_all(pause);
            }
            if received == Received::Ready {
                woke |= st.route(slot, generation, offset);
            }
        }
        drop(st);
        if woke {
            self.ready.notify_one();
        }
    }

    /// Hands out the next ready message, unless `max_in_flight` are out,
    /// the source is closed, or nothing is ready.
    pub(crate) fn take(&self) -> Result<Option<Taken>, Option<SourceError>> {
        let mut st = self.lock();
        if let Some(error) = st.errors.pop_front() {
            return Err(Some(error));
        }
        if st.closed {
            return Err(None);
        }
        if st.outstanding >= st.max_in_flight {
            return Ok(None);
        }
        while let Some(q) = st.ready.pop_front() {
            let Some(Some(slot)) = st.slots.get_mut(q.slot) else {
                continue;
            };
            if slot.tracker.generation() != q.generation {
                continue;
            }
            let Some(message) = slot.tracker.take(q.offset) else {
                continue;
            };
            let tp = slot.tp.clone();
            let revoked = slot.revoked.clone();
            st.outstanding += 1;
            return Ok(Some(Taken {
                message,
                revoked,
                ticket: Ticket {
                    tp,
                    slot: q.slot,
                    generation: q.generation,
                    offset: q.offset,
                },
            }));
        }
        Ok(None)
    }

    /// Swaps the messages settled since the last call into `freed` (for the
    /// poll thread to drop outside the lock; see [`State::freed`]).
    pub(crate) fn take_freed(&self, freed: &mut Vec<Arc<Message>>) {
        let mut st = self.lock();
        if !st.freed.is_empty() {
            std::mem::swap(&mut st.freed, freed);
        }
    }

    /// Waits until [`Dispatcher::take`] may have something new.
    pub(crate) async fn changed(&self) {
        self.ready.notified().await;
    }

    /// Settles a delivery: `done`, or back to be handed out again. Wakes
    /// the source only when that can give it something: a message became
    /// ready, or a slot opened under `max_in_flight`.
    pub(crate) fn settle(&self, ticket: &Ticket, done: bool) -> Result<(), Refused> {
        let mut released = Vec::new();
        let mut freed = None;
        let (result, wake) = {
            let mut st = self.lock();
            let was_full = st.outstanding >= st.max_in_flight;
            st.outstanding = st.outstanding.saturating_sub(1);
            if done && st.ordered.is_some() {
                st.before_done(ticket);
            }
            let result = match st.live(ticket.slot, ticket.generation) {
                Some(tracker) => {
                    let ok = if done {
                        tracker.complete(ticket.offset, &mut released, &mut freed)
                    } else if tracker.requeue(ticket.offset) {
                        released.push(ticket.offset);
                        true
                    } else {
                        false
                    };
                    if ok { Ok(()) } else { Err(Refused::Settled) }
                }
                None => Err(Refused::Fenced),
            };
            if result.is_ok() {
                if done {
                    st.settled += 1;
                    if let Some(Some(slot)) = st.slots.get_mut(ticket.slot)
                        && slot.lane_of.is_some()
                    {
                        slot.lane_done.push(ticket.offset);
                    }
                } else if let Some(pending) = &st.pending {
                    // Back to run again: what it produced goes with it.
                    pending.discard(&ticket.tp, ticket.offset);
                }
            }
            let mut wake = was_full;
            for offset in released {
                wake |= st.route(ticket.slot, ticket.generation, offset);
            }
            if let Some(message) = freed {
                st.freed.push(message);
            }
            (result, wake)
        };
        if wake {
            self.ready.notify_one();
        }
        result
    }

    /// Exactly-once mode: deliveries produce into `pending`, per partition
    /// generation (call before anything is assigned).
    pub(crate) fn transactional(&self, pending: Arc<Pending>) {
        self.lock().pending = Some(pending);
    }

    /// Rewinds so far: stamped on each polled message ([`Incoming::epoch`]).
    pub(crate) fn rewind_epoch(&self) -> u64 {
        self.rewinds.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Deliveries settled done since the last [`take_to_commit`](Self::take_to_commit).
    pub(crate) fn settled(&self) -> usize {
        self.lock().settled
    }

    /// The offsets to commit for every partition, and the count of settled
    /// deliveries starts again (under one lock: a settlement counts for
    /// this transaction or the next, never for none).
    pub(crate) fn take_to_commit(&self) -> ToCommit {
        let mut st = self.lock();
        st.settled = 0;
        let lanes = st
            .slots
            .iter_mut()
            .flatten()
            .filter(|s| !s.lane_done.is_empty())
            .map(|s| (s.tp.clone(), std::mem::take(&mut s.lane_done)))
            .collect();
        ToCommit {
            offsets: st.to_commit(),
            lanes,
        }
    }

    /// After an aborted transaction: each partition's tracker starts over
    /// under a new generation (its in-flight deliveries fenced: handlers
    /// cancelled, settlements refused, what they produced dropped), and
    /// the offset to read it again from is returned (the last committed
    /// one; partitions that received nothing are left as they are).
    pub(crate) fn rewind(&self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut st = self.lock();
        let mut rewound = Vec::new();
        // A lane is rewound with its main partition, which loads it again.
        let mut mains: Vec<Tp> = Vec::with_capacity(tps.len());
        for tp in tps {
            let main = st.main_of(tp).unwrap_or_else(|| tp.clone());
            if !mains.contains(&main) {
                mains.push(main);
            }
        }
        for tp in &mains {
            let offset = st.by_tp(tp).and_then(|t| t.rewind_to());
            let parked = st.index.get(tp).is_some_and(|&i| {
                st.slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.parking.is_some())
            });
            if offset.is_none() && !parked {
                continue;
            }
            let delayed = st.by_tp(tp).is_some_and(|t| t.is_delayed());
            let epoch = self
                .rewinds
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                + 1;
            let slot = st.insert(tp.clone(), delayed);
            if let Some(Some(slot)) = st.slots.get_mut(slot) {
                slot.rewound_at = epoch;
            }
            if let Some(offset) = offset {
                rewound.push((tp.clone(), offset));
            }
        }
        st.forget_stale_ready();
        rewound
    }

    /// Pauses every assigned partition (and any assigned later) until
    /// called with `false`; the poll thread applies it on its next
    /// maintenance, and keeps polling meanwhile.
    pub(crate) fn hold(&self, held: bool) {
        self.lock().held = held;
    }

    /// What the poll thread should do now: due messages are released, full
    /// partitions paused, drained ones resumed, watermarks stored.
    pub(crate) fn maintain(&self) -> Actions {
        let now = SystemTime::now();
        let mut actions = Actions::default();
        let mut st = self.lock();
        let (max_pending, max_bytes) = (st.max_pending, st.max_bytes);
        let totals = st.totals();
        if st.over(totals) {
            st.over_budget = true;
        } else if totals.0 <= st.total_pending / 2 && totals.1 <= st.total_bytes / 2 {
            st.over_budget = false;
        }
        let over_budget = st.over_budget || st.held;
        let mut released = Vec::new();
        let mut queued = Vec::new();
        for (
            i,
            Slot {
                tp,
                tracker,
                lane_of,
                ..
            },
        ) in st.slots_mut()
        {
            if lane_of.is_some() {
                // Lanes are read by their own consumer; nothing to pause or store.
                continue;
            }
            tracker.release_due(now, &mut released);
            for offset in released.drain(..) {
                queued.push(Queued {
                    slot: i,
                    generation: tracker.generation(),
                    offset,
                });
            }
            let wants_pause = over_budget
                || tracker.len() >= max_pending
                || tracker.bytes() >= max_bytes
                || tracker.not_due() > 0;
            let may_resume = !over_budget
                && tracker.len() <= max_pending / 2
                && tracker.bytes() <= max_bytes / 2
                && tracker.not_due() == 0;
            if tracker.is_paused() && may_resume {
                tracker.set_paused(false);
                actions.resume.push(tp.clone());
            } else if !tracker.is_paused() && wants_pause {
                tracker.set_paused(true);
                actions.pause.push(tp.clone());
            }
            if let Some(offset) = tracker.to_store() {
                actions.store.push((tp.clone(), offset));
            }
            if tracker.is_idle() && tracker.last_received().is_some() {
                actions.idle.push(tp.clone());
            }
        }
        st.ready.extend(queued);
        st.mark_loading_again();
        let wake = !st.ready.is_empty();
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        actions
    }

    /// The earliest due time of a held retry message.
    pub(crate) fn next_due(&self) -> Option<SystemTime> {
        self.lock()
            .slots
            .iter()
            .flatten()
            .filter_map(|s| s.tracker.next_due())
            .min()
    }

    /// Records offsets as stored.
    pub(crate) fn mark_stored(&self, stored: &[(Tp, i64)]) {
        let mut st = self.lock();
        for (tp, offset) in stored {
            if let Some(t) = st.by_tp(tp) {
                t.mark_stored(*offset);
            }
        }
    }

    /// Records offsets as committed.
    pub(crate) fn mark_committed(&self, committed: &[(Tp, i64)]) {
        let mut st = self.lock();
        for (tp, offset) in committed {
            if let Some(t) = st.by_tp(tp) {
                t.mark_committed(*offset);
            }
        }
    }

    /// Advances idle partitions to the consumer's positions.
    pub(crate) fn advance_idle(&self, positions: &[(Tp, i64)]) {
        let mut st = self.lock();
        for (tp, position) in positions {
            if let Some(t) = st.by_tp(tp) {
                t.advance_idle(*position);
            }
        }
    }

    /// Every tracked partition with its first unfinished offset (for the
    /// lag metrics, on their interval).
    pub(crate) fn heads(&self) -> Vec<(Tp, Option<i64>)> {
        self.lock()
            .slots
            .iter()
            .flatten()
            .filter(|s| s.lane_of.is_none())
            .map(|s| (s.tp.clone(), s.tracker.first_unfinished()))
            .collect()
    }

    /// The offsets to commit for every partition (on close).
    pub(crate) fn to_commit(&self) -> Vec<(Tp, i64)> {
        self.lock().to_commit()
    }

    /// Stops handing out deliveries; `next` returns `None` from now on.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Reports an error to the source's reader.
    pub(crate) fn report(&self, error: SourceError) {
        self.lock().errors.push_back(error);
        self.ready.notify_one();
    }

    /// Messages tracked (received, not yet passed by a watermark) and bytes
    /// held, over every partition.
    pub(crate) fn pending(&self) -> (usize, usize) {
        self.lock().totals()
    }

    /// Unsettled deliveries handed out.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        (Arc::from("t"), 0)
    }

    fn msg(offset: i64, key: &str) -> Message {
        let mut m = Message::new("x").with_key(key.to_owned());
        m.meta.offset = Some(offset);
        m
    }

    #[test]
    fn hands_out_at_most_max_in_flight() {
        let d = Dispatcher::new(1, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        d.receive(tp(), msg(1, "b"), None, false);
        let first = d.take().unwrap().unwrap();
        assert!(d.take().unwrap().is_none(), "one is out");
        d.settle(&first.ticket, true).unwrap();
        assert_eq!(d.take().unwrap().unwrap().ticket.offset, 1);
        assert_eq!(d.outstanding(), 1);
    }

    #[test]
    fn a_settled_message_goes_back_to_the_poll_thread_to_be_dropped() {
        let d = Dispatcher::new(10, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        let taken = d.take().unwrap().unwrap();
        let weak = Arc::downgrade(&taken.message);
        let ticket = taken.ticket;
        drop(taken.message);
        d.settle(&ticket, true).unwrap();
        assert!(
            weak.upgrade().is_some(),
            "held for the poll thread, not dropped here"
        );
        let mut freed = Vec::new();
        d.receive_all(&mut Vec::new(), &mut Vec::new(), &mut freed);
        assert_eq!(freed.len(), 1);
        freed.clear();
        assert!(weak.upgrade().is_none(), "dropped by whoever drains it");
        // A requeue keeps the message: nothing to free.
        d.receive(tp(), msg(1, "b"), None, false);
        let again = d.take().unwrap().unwrap();
        d.settle(&again.ticket, false).unwrap();
        d.take_freed(&mut freed);
        assert!(freed.is_empty());
    }

    #[test]
    fn a_settle_wakes_the_source_only_when_it_can_take_something() {
        let d = Dispatcher::new(1, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        let first = d.take().unwrap().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // The receive stored a permit: consume it.
        let mut changed = Box::pin(d.changed());
        assert!(changed.as_mut().poll(&mut cx).is_ready());
        // Full (1 of 1 out): settling opens a slot, so it wakes.
        d.settle(&first.ticket, true).unwrap();
        let mut changed = Box::pin(d.changed());
        assert!(changed.as_mut().poll(&mut cx).is_ready(), "a slot opened");
        // Not full, nothing released: no wake-up (no spurious loop turn).
        let d = Dispatcher::new(10, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        let first = d.take().unwrap().unwrap();
        let mut changed = Box::pin(d.changed());
        assert!(changed.as_mut().poll(&mut cx).is_ready());
        d.settle(&first.ticket, true).unwrap();
        let mut changed = Box::pin(d.changed());
        assert!(
            changed.as_mut().poll(&mut cx).is_pending(),
            "nothing new to take"
        );
        drop(changed);
        // The next message of a key released by a settle wakes.
        d.receive(tp(), msg(1, "k"), None, false);
        d.receive(tp(), msg(2, "k"), None, false);
        let mut changed = Box::pin(d.changed());
        assert!(changed.as_mut().poll(&mut cx).is_ready());
        let one = d.take().unwrap().unwrap();
        assert!(d.take().unwrap().is_none(), "k@2 waits behind k@1");
        d.settle(&one.ticket, true).unwrap();
        let mut changed = Box::pin(d.changed());
        assert!(
            changed.as_mut().poll(&mut cx).is_ready(),
            "k@2 became ready"
        );
    }

    #[test]
    fn revoke_fences_queued_and_in_flight_deliveries() {
        let d = Dispatcher::new(10, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        d.receive(tp(), msg(1, "b"), None, false);
        d.receive(tp(), msg(2, "c"), None, false);
        let first = d.take().unwrap().unwrap();
        d.settle(&first.ticket, true).unwrap();
        let second = d.take().unwrap().unwrap();
        let commit = d.revoke([("t", 0)]);
        assert_eq!(commit, vec![(tp(), 1)], "only offset 0 is done");
        assert!(d.take().unwrap().is_none(), "queued offset 2 is dropped");
        assert!(matches!(
            d.settle(&second.ticket, true),
            Err(Refused::Fenced)
        ));
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(1, "b"), None, false);
        let again = d.take().unwrap().unwrap();
        assert_ne!(again.ticket.generation, second.ticket.generation);
    }

    #[test]
    fn a_revoke_cancels_the_handlers_of_its_deliveries() {
        let d = Dispatcher::new(10, 100, usize::MAX);
        let other: Tp = (Arc::from("t"), 1);
        d.assign([(tp(), false), (other.clone(), false)]);
        d.receive(tp(), msg(0, "a"), None, false);
        d.receive(other.clone(), msg(0, "b"), None, false);
        let (a, b) = (d.take().unwrap().unwrap(), d.take().unwrap().unwrap());
        assert!(!a.revoked.is_cancelled() && !b.revoked.is_cancelled());
        d.revoke([("t", 0)]);
        assert!(
            a.revoked.is_cancelled(),
            "the revoked partition's run stops"
        );
        assert!(
            !b.revoked.is_cancelled(),
            "the other partition's run goes on"
        );
    }

    #[test]
    fn messages_polled_before_a_revoke_are_never_handed_out_after_it() {
        let d = Dispatcher::new(10, 100, usize::MAX);
        d.assign([(tp(), false)]);
        d.revoke([("t", 0)]);
        // The rest of a batch collected across the rebalance.
        d.receive(tp(), msg(5, "a"), None, false);
        assert!(
            d.take().unwrap().is_none(),
            "a revoked partition's late message is dropped"
        );
        d.assign([(tp(), false)]);
        d.receive(tp(), msg(5, "a"), None, false);
        assert!(
            d.take().unwrap().is_some(),
            "reassigned, it is tracked again"
        );
    }

    #[test]
    fn a_held_consumer_pauses_every_partition_until_released() {
        let d = Dispatcher::new(100, 100, usize::MAX);
        let other: Tp = (Arc::from("t"), 1);
        d.assign([(tp(), false), (other.clone(), false)]);
        assert!(d.maintain().pause.is_empty());
        d.hold(true);
        let mut paused = d.maintain().pause;
        paused.sort();
        assert_eq!(paused, vec![tp(), other.clone()]);
        assert!(d.maintain().resume.is_empty(), "stays paused while held");
        d.hold(false);
        let mut resumed = d.maintain().resume;
        resumed.sort();
        assert_eq!(resumed, vec![tp(), other]);
    }

    #[test]
    fn a_full_partition_is_paused_and_resumed_when_drained() {
        let d = Dispatcher::new(100, 4, usize::MAX);
        d.assign([(tp(), false)]);
        for o in 0..3 {
            assert!(d.receive(tp(), msg(o, "k"), None, false).is_none());
        }
        assert_eq!(d.receive(tp(), msg(3, "k"), None, false), Some(tp()));
        for _ in 0..3 {
            let t = d.take().unwrap().unwrap();
            d.settle(&t.ticket, true).unwrap();
        }
        let actions = d.maintain();
        assert_eq!(actions.resume, vec![tp()]);
        assert_eq!(actions.store, vec![(tp(), 3)]);
    }

    #[test]
    fn a_partition_holding_too_many_bytes_is_paused() {
        let d = Dispatcher::new(100, 1_000, 4_096);
        d.assign([(tp(), false)]);
        let big = |o: i64| {
            let mut m = Message::new(vec![0u8; 1_500]).with_key(format!("k{o}"));
            m.meta.offset = Some(o);
            m
        };
        assert!(d.receive(tp(), big(0), None, false).is_none());
        assert!(d.receive(tp(), big(1), None, false).is_none());
        assert_eq!(
            d.receive(tp(), big(2), None, false),
            Some(tp()),
            "over 4 KiB held"
        );
        for _ in 0..3 {
            let t = d.take().unwrap().unwrap();
            d.settle(&t.ticket, true).unwrap();
        }
        assert_eq!(
            d.maintain().resume,
            vec![tp()],
            "done messages free their bytes"
        );
    }

    #[test]
    fn the_consumer_budget_pauses_every_partition_and_resumes_at_half() {
        // 8 MB over 16 partitions, each partition allowed far more on its own.
        let budget = 8 << 20;
        let d = Dispatcher::with_totals(1_000, (100_000, 64 << 20), (100_000, budget));
        let tps: Vec<Tp> = (0..16).map(|p| (Arc::from("t"), p)).collect();
        d.assign(tps.iter().map(|tp| (tp.clone(), false)));
        let record = |o: i64| {
            let mut m = Message::new(vec![0u8; 100_000]).with_key(format!("k{o}"));
            m.meta.offset = Some(o);
            m
        };
        let mut paused = Vec::new();
        let mut offset = 0;
        // Round-robin, like a fetch over 16 partitions, until the poll
        // thread would stop: every partition paused.
        while paused.len() < tps.len() {
            let mut batch: Vec<Incoming> = tps
                .iter()
                .filter(|tp| !paused.contains(*tp))
                .map(|tp| Incoming {
                    tp: tp.clone(),
                    message: record(offset),
                    due: None,
                    delayed: false,
                    epoch: 0,
                })
                .collect();
            offset += 1;
            d.receive_all(&mut batch, &mut paused, &mut Vec::new());
            assert!(offset < 1_000, "never paused");
        }
        let (_, held) = d.pending();
        assert!(held >= budget && held < budget + 16 * 101_000, "{held}");
        assert!(d.maintain().resume.is_empty(), "still over budget");
        let mut resumed = Vec::new();
        while resumed.is_empty() {
            let t = d.take().unwrap().unwrap();
            d.settle(&t.ticket, true).unwrap();
            resumed = d.maintain().resume;
            if resumed.is_empty() {
                assert!(d.pending().1 > budget / 2, "not resumed at half the budget");
            }
        }
        assert!(d.pending().1 <= budget / 2, "resumed above half the budget");
        assert_eq!(resumed.len(), 16, "all resume together");
    }

    #[test]
    fn the_consumer_message_budget_counts_every_partition() {
        let d = Dispatcher::with_totals(1_000, (100, usize::MAX), (8, usize::MAX));
        let tps: Vec<Tp> = (0..16).map(|p| (Arc::from("t"), p)).collect();
        d.assign(tps.iter().map(|tp| (tp.clone(), false)));
        let mut paused = Vec::new();
        for (o, tp) in tps.iter().enumerate().take(8) {
            d.receive_all(
                &mut vec![Incoming {
                    tp: tp.clone(),
                    message: msg(o as i64, "k"),
                    due: None,
                    delayed: false,
                    epoch: 0,
                }],
                &mut paused,
                &mut Vec::new(),
            );
        }
        assert_eq!(
            paused.len(),
            16,
            "8 messages over 8 partitions pause all 16"
        );
    }

    #[test]
    fn a_rewind_starts_the_partition_over_and_drops_what_was_polled_before_it() {
        use backstop::transaction::Transaction;

        use crate::transaction::DeliverySlot;

        let d = Dispatcher::new(10, 100, usize::MAX);
        let pending = Arc::new(Pending::default());
        d.transactional(Arc::clone(&pending));
        d.assign([(tp(), false)]);
        for o in 0..3 {
            d.receive(tp(), msg(o, &format!("k{o}")), None, false);
        }
        let slot_of = |t: &Taken| DeliverySlot {
            pending: Arc::clone(&pending),
            tp: t.ticket.tp.clone(),
            generation: t.ticket.generation,
            offset: t.ticket.offset,
        };
        let first = d.take().unwrap().unwrap();
        let before = slot_of(&first);
        d.settle(&first.ticket, true).unwrap();
        // Polled before the rewind, tracked after it: dropped.
        let stale_epoch = d.rewind_epoch();
        assert_eq!(
            d.rewind(&[tp()]),
            vec![(tp(), 0)],
            "back to the first offset"
        );
        d.receive_all(
            &mut vec![Incoming {
                tp: tp(),
                message: msg(7, "k7"),
                due: None,
                delayed: false,
                epoch: stale_epoch,
            }],
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert!(
            d.take().unwrap().is_none(),
            "nothing polled before the rewind"
        );
        // Read again from offset 0, under the new generation, which may produce.
        d.receive(tp(), msg(0, "k0"), None, false);
        let again = d.take().unwrap().unwrap();
        assert_eq!(again.ticket.offset, 0);
        assert!(slot_of(&again).produce("dlq", Message::new("x")).is_ok());
        assert!(
            before.produce("dlq", Message::new("x")).is_err(),
            "the old generation is fenced"
        );
        assert!(d.settle(&first.ticket, true).is_err());
    }
}
