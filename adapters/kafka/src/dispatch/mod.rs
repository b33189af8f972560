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

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use backstop::runner::SourceError;
use backstop::{CancellationToken, Message};
use tokio::sync::Notify;

use self::slots::{Queued, Slot, State};
use crate::topic_partition::TopicPartition;
use crate::tracker::Arrival;
use crate::transaction::Pending;

mod ordered;
mod slots;
#[cfg(test)]
mod tests;

pub(crate) use self::ordered::{Lane, Ordered, ParkedNow};

/// What the poll thread should do to a partition after a change.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    /// Partitions to pause.
    pub(crate) pause: Vec<TopicPartition>,
    /// Partitions to resume.
    pub(crate) resume: Vec<TopicPartition>,
    /// Offsets to store (last done + 1).
    pub(crate) store: Vec<(TopicPartition, i64)>,
    /// Idle partitions whose watermark may advance to the consumer's position.
    pub(crate) idle: Vec<TopicPartition>,
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
    pub(crate) tp: TopicPartition,
    pub(crate) message: Arc<Message>,
    pub(crate) due: Option<SystemTime>,
    pub(crate) delayed: bool,
    /// The dispatcher's rewind count when the message was polled: a
    /// message polled before its partition was rewound is dropped (the
    /// consumer reads it again from the rewound offset).
    pub(crate) epoch: u64,
}

/// What a transaction commits: the group's offsets, and the lanes'
/// deliveries settled done since the last one (their records; see
/// [`parking`](crate::parking)).
#[derive(Debug, Default)]
pub(crate) struct ToCommit {
    pub(crate) offsets: Vec<(TopicPartition, i64)>,
    pub(crate) lanes: Vec<(TopicPartition, Vec<i64>)>,
}

/// A delivery the source hands out: the message and how to settle it.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) message: Arc<Message>,
    pub(crate) ticket: Ticket,
    /// Cancelled when the partition is revoked (one per partition, shared).
    pub(crate) revoked: Arc<CancellationToken>,
}

/// What [`Dispatcher::take`] found.
#[derive(Debug)]
pub(crate) enum Take {
    /// A delivery to hand out.
    Ready(Taken),
    /// Nothing to hand out now: nothing is ready, or `max_in_flight`
    /// deliveries are out; wait for [`Dispatcher::changed`].
    Empty,
    /// The source is closed: nothing will be handed out any more.
    Closed,
    /// An error reported to the source's reader (see [`Dispatcher::report`]).
    Failed(SourceError),
}

#[cfg(test)]
impl Take {
    /// The delivery, or `None` when nothing is ready; panics when the
    /// dispatcher is closed or failed.
    pub(crate) fn ready(self) -> Option<Taken> {
        match self {
            Take::Ready(taken) => Some(taken),
            Take::Empty => None,
            Take::Closed => panic!("the dispatcher is closed"),
            Take::Failed(error) => panic!("the dispatcher failed: {error}"),
        }
    }
}

/// How a delivery is settled ([`Dispatcher::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Finished (acked, or dropped): its offset counts as done.
    Done,
    /// Back to be handed out again; the watermark stays below it.
    Requeue,
}

/// What an acker needs to settle its delivery.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) tp: TopicPartition,
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
            state: Mutex::new(State::new(
                max_in_flight,
                (max_pending, max_bytes),
                (total_pending, total_bytes),
            )),
            ready: Notify::new(),
            rewinds: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking newly assigned partitions (each gets a new generation).
    pub(crate) fn assign(&self, partitions: impl IntoIterator<Item = (TopicPartition, bool)>) {
        let mut st = self.lock();
        for (tp, delayed) in partitions {
            st.insert(tp, delayed);
        }
    }

    /// Fences revoked partitions; returns the offsets to commit for them.
    pub(crate) fn revoke<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<(TopicPartition, i64)> {
        let mut st = self.lock();
        let mut commit = Vec::new();
        for (topic, partition) in partitions {
            let tp = TopicPartition::new(topic, partition);
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
        tp: TopicPartition,
        message: Message,
        due: Option<SystemTime>,
        delayed: bool,
    ) -> Option<TopicPartition> {
        let mut pause = Vec::new();
        self.receive_all(
            &mut vec![Incoming {
                tp,
                message: Arc::new(message),
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
    /// The messages settled since the last call are moved to the end of
    /// `freed` (the poll thread drops them outside the lock).
    pub(crate) fn receive_all(
        &self,
        batch: &mut Vec<Incoming>,
        pause: &mut Vec<TopicPartition>,
        freed: &mut Vec<Arc<Message>>,
    ) {
        let now = batch
            .iter()
            .any(|i| i.due.is_some())
            .then(SystemTime::now)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut woke = false;
        let mut st = self.lock();
        give_freed(&mut st.freed, freed);
        let (max_pending, max_bytes) = (st.max_pending, st.max_bytes);
        let mut totals = st.totals();
        let mut last: Option<(TopicPartition, usize)> = None;
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
            let arrival = tracker.receive(incoming.message, incoming.due, now);
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
            if arrival == Arrival::Ready {
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
    pub(crate) fn take(&self) -> Take {
        let mut st = self.lock();
        if let Some(error) = st.errors.pop_front() {
            return Take::Failed(error);
        }
        if st.closed {
            return Take::Closed;
        }
        if st.outstanding >= st.max_in_flight {
            return Take::Empty;
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
            return Take::Ready(Taken {
                message,
                revoked,
                ticket: Ticket {
                    tp,
                    slot: q.slot,
                    generation: q.generation,
                    offset: q.offset,
                },
            });
        }
        Take::Empty
    }

    /// Moves the messages settled since the last call to the end of
    /// `freed` (for the poll thread to drop outside the lock; see
    /// [`State::freed`]).
    pub(crate) fn take_freed(&self, freed: &mut Vec<Arc<Message>>) {
        give_freed(&mut self.lock().freed, freed);
    }

    /// Waits until [`Dispatcher::take`] may have something new.
    pub(crate) async fn changed(&self) {
        self.ready.notified().await;
    }

    /// Settles a delivery: done, or back to be handed out again. Wakes
    /// the source only when that can give it something: a message became
    /// ready, or a slot opened under `max_in_flight`.
    pub(crate) fn settle(&self, ticket: &Ticket, settlement: Settlement) -> Result<(), Refused> {
        let done = settlement == Settlement::Done;
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
    pub(crate) fn rewind(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut st = self.lock();
        let mut rewound = Vec::new();
        // A lane is rewound with its main partition, which loads it again.
        let mut mains: Vec<TopicPartition> = Vec::with_capacity(tps.len());
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
    pub(crate) fn mark_stored(&self, stored: &[(TopicPartition, i64)]) {
        let mut st = self.lock();
        for (tp, offset) in stored {
            if let Some(t) = st.by_tp(tp) {
                t.mark_stored(*offset);
            }
        }
    }

    /// Records offsets as committed.
    pub(crate) fn mark_committed(&self, committed: &[(TopicPartition, i64)]) {
        let mut st = self.lock();
        for (tp, offset) in committed {
            if let Some(t) = st.by_tp(tp) {
                t.mark_committed(*offset);
            }
        }
    }

    /// Advances idle partitions to the consumer's positions.
    pub(crate) fn advance_idle(&self, positions: &[(TopicPartition, i64)]) {
        let mut st = self.lock();
        for (tp, position) in positions {
            if let Some(t) = st.by_tp(tp) {
                t.advance_idle(*position);
            }
        }
    }

    /// Every tracked partition with its first unfinished offset (for the
    /// lag metrics, on their interval).
    pub(crate) fn heads(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.lock()
            .slots
            .iter()
            .flatten()
            .filter(|s| s.lane_of.is_none())
            .map(|s| (s.tp.clone(), s.tracker.first_unfinished()))
            .collect()
    }

    /// The offsets to commit for every partition (on close).
    pub(crate) fn to_commit(&self) -> Vec<(TopicPartition, i64)> {
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

/// Moves the settled messages of `from` (the dispatcher's, under its lock)
/// to the end of `to` (the poll thread's): a swap when `to` is empty, so
/// the lock is held for no copy and no allocation in the common case.
fn give_freed(from: &mut Vec<Arc<Message>>, to: &mut Vec<Arc<Message>>) {
    if to.is_empty() {
        std::mem::swap(from, to);
    } else {
        to.append(from);
    }
}
