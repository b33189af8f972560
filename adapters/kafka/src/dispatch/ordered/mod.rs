//! The dispatcher's share of retries that keep per-key order (see
//! [`parking`](crate::parking)): a main partition's parked keys, and the
//! records each settlement adds to the transaction. The partition's lane,
//! where its parked copies are read back, is in [`lane`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backstop::wire;
use bytes::Bytes;

use super::{Dispatcher, Queued, State, Ticket};
use crate::names::parked_topic;
use crate::parking::{KeyPark, Loading, ParkedPartition};
use crate::topic_partition::TopicPartition;
use crate::transaction::Record;

mod lane;

/// How long a load waits for its marker before queuing it again (an
/// aborted transaction drops it).
const MARK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Ordered retries for a source's main topics.
#[derive(Debug)]
pub(crate) struct Ordered {
    group: String,
    /// The main topics whose keys park.
    topics: HashSet<String>,
    /// The retry topics: a record to one of them is a deferral.
    retry: HashSet<String>,
    /// `.<group>.retry.`: a record to `<origin>.<group>.retry.<tier>` is a
    /// deferral too (a retry sink built with other tiers than the source's).
    retry_infix: String,
}

impl Ordered {
    /// Parks the keys of `topics` (main topics of `group`) whose messages
    /// go to one of `retry` (the source's retry topics).
    pub(crate) fn new(
        group: &str,
        topics: impl IntoIterator<Item = String>,
        retry: impl IntoIterator<Item = String>,
    ) -> Self {
        Ordered {
            group: group.to_owned(),
            topics: topics.into_iter().collect(),
            retry: retry.into_iter().collect(),
            retry_infix: crate::names::retry_infix(group),
        }
    }

    /// True when a record to `destination`, made by a message of
    /// `origin`, is a retry copy.
    fn is_retry(&self, origin: &str, destination: &str) -> bool {
        self.retry.contains(destination)
            || destination
                .strip_prefix(origin)
                .is_some_and(|rest| rest.starts_with(&self.retry_infix))
    }
}

/// A lane the parked-topic reader follows: its partition and generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lane {
    pub(crate) tp: TopicPartition,
    /// The main topic whose copies it holds.
    pub(crate) main: Arc<str>,
    pub(crate) generation: u64,
}

/// What ordered retries hold now, for the gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParkedNow {
    /// Keys parked, over every main partition.
    pub(crate) keys: usize,
    /// Copies read back and not run yet.
    pub(crate) copies: usize,
    /// Main partitions still loading their parked partition.
    pub(crate) loading: usize,
}

/// A main partition's parked keys; see [`parking`](crate::parking).
#[derive(Debug)]
pub(crate) struct Parking {
    lane_tp: TopicPartition,
    /// The lane's generation: records of no delivery are written only
    /// while it is owned.
    lane_generation: u64,
    parked: ParkedPartition,
    /// The consumer group (the metrics' label).
    group: Arc<str>,
    keys: HashMap<Bytes, KeyPark, foldhash::fast::RandomState>,
    /// Until its own marker is read back: nothing keyed is handed out.
    loading: Option<Loading>,
    /// Per lane offset, the copy's key and main offset.
    copies: HashMap<i64, (Bytes, i64)>,
}

impl Parking {
    /// Adds records of no delivery to the next transaction (while the
    /// lane is owned).
    fn loose(
        &self,
        pending: &crate::transaction::Pending,
        records: impl IntoIterator<Item = Record>,
    ) {
        pending.add_loose(&self.lane_tp, self.lane_generation, records);
    }
}

impl State {
    /// A message of `slot` became ready: it is queued, unless its
    /// partition parks its key (then a copy of it goes to the parked topic
    /// in its transaction and it is done without running; the next message
    /// of its key is routed the same way) or is loading (it waits).
    /// Returns true when something was queued.
    pub(super) fn route(&mut self, slot: usize, generation: u64, offset: i64) -> bool {
        let ordered = self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.parking.is_some());
        if !ordered {
            // The per-message path when nothing parks: queued as it is.
            self.ready.push_back(Queued {
                slot,
                generation,
                offset,
            });
            return true;
        }
        // A parked message releases its key's next one, routed in turn.
        let mut work = Vec::new();
        let mut next = Some(offset);
        let mut queued = false;
        while let Some(offset) = next.take().or_else(|| work.pop()) {
            let State {
                slots,
                ready,
                pending,
                freed,
                settled,
                ..
            } = self;
            let Some(Some(s)) = slots.get_mut(slot) else {
                return queued;
            };
            if s.tracker.generation() != generation {
                return queued;
            }
            let key = s
                .parking
                .as_ref()
                .and_then(|_| s.tracker.message(offset))
                .and_then(|m| m.key.clone());
            // Keyless, not ordered, or its key not parked: it runs.
            let parked = match (s.parking.as_deref_mut(), key, pending.as_ref()) {
                (Some(parking), Some(key), Some(pending)) => {
                    if let Some(loading) = &mut parking.loading {
                        loading.waiting.push(offset);
                        continue;
                    }
                    parking
                        .keys
                        .contains_key(&key)
                        .then_some((parking, key, pending))
                }
                _ => None,
            };
            let copy = parked.and_then(|(parking, key, pending)| {
                let message = s.tracker.message(offset)?;
                let copy = parking.parked.follower(message, &key, offset);
                if pending.fits(&copy) {
                    return Some((parking, key, pending, copy));
                }
                // `ensure_topics` refuses a topic whose records could be
                // this large; a copy the producer cannot send would abort
                // every transaction, so the message runs out of order.
                tracing::error!(topic = %s.tp.topic, partition = s.tp.partition, offset, "a message of a parked key is too large to copy to the parked topic; it runs now, out of its key's order");
                crate::telemetry::parked(&parking.group, "too_large");
                None
            });
            let Some((parking, key, pending, copy)) = copy else {
                ready.push_back(Queued {
                    slot,
                    generation,
                    offset,
                });
                queued = true;
                continue;
            };
            if !pending.append(&s.tp, generation, offset, [copy]) {
                continue;
            }
            parking.keys.entry(key).or_default().followers += 1;
            let mut released = Vec::new();
            let mut done = None;
            if s.tracker.park_done(offset, &mut released, &mut done) {
                *settled += 1;
                crate::telemetry::parked(&parking.group, "follower");
            }
            freed.extend(done);
            // At most one (the next of this key): order kept.
            work.extend(released.into_iter().rev());
        }
        queued
    }

    /// Before a delivery settles done: what ordered retries add to its
    /// transaction. A main message that went to a retry tier makes its key
    /// parked; a lane copy that ran releases its key's next one (or, gone
    /// to a retry tier, becomes its key's head); a retry-topic message that
    /// did not go on to another tier ended its key's head. Nothing for a
    /// delivery that is not in flight (the settlement will be refused).
    pub(super) fn before_done(&mut self, ticket: &Ticket) {
        let (Some(ordered), Some(pending)) = (&self.ordered, &self.pending) else {
            return;
        };
        let Some(Some(slot)) = self.slots.get(ticket.slot) else {
            return;
        };
        if slot.tracker.generation() != ticket.generation
            || !slot.tracker.is_in_flight(ticket.offset)
        {
            return;
        }
        let Some(message) = slot.tracker.message(ticket.offset) else {
            return;
        };
        let origin = message.meta.origin();
        let deferred = pending.inspect(&ticket.tp, ticket.offset, |records| {
            records
                .iter()
                .any(|r| ordered.is_retry(origin, &r.destination))
        });
        if let Some(main) = slot.lane_of {
            self.lane_done(main, ticket, deferred);
            return;
        }
        let Some(key) = message.key.clone() else {
            return;
        };
        if slot.tracker.is_delayed() {
            if deferred || !ordered.topics.contains(origin) {
                return;
            }
            // A retry copy ended (handled, dead-lettered, a duplicate): its
            // key's head, if it was one, is over on its main partition.
            // The position headers of a retry topic's records are
            // backstop's own (a main topic's are rewritten on consumption).
            let position = |name| message.header(name).and_then(|v| v.parse::<i64>().ok());
            let (Some(partition), Some(offset)) = (
                position(wire::ORIGINAL_PARTITION).and_then(|p| i32::try_from(p).ok()),
                position(wire::ORIGINAL_OFFSET),
            ) else {
                return;
            };
            let parked = ParkedPartition {
                topic: parked_topic(origin, &ordered.group),
                partition,
            };
            pending.append(
                &ticket.tp,
                ticket.generation,
                ticket.offset,
                [parked.ended(&key, offset)],
            );
            return;
        }
        if !deferred {
            return;
        }
        let Some(Some(slot)) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        let Some(parking) = slot.parking.as_deref_mut() else {
            return;
        };
        // A live head stays (a message of its key that ran while it was
        // parked, too large to copy, does not replace it).
        if parking.keys.get(&key).is_some_and(|p| p.head.is_some()) {
            return;
        }
        let record = parking.parked.head(&key, ticket.offset);
        if pending.append(&ticket.tp, ticket.generation, ticket.offset, [record]) {
            parking.keys.entry(key).or_default().head = Some(ticket.offset);
            crate::telemetry::parked(&parking.group, "head");
        }
    }

    /// A lane copy settles done (see [`before_done`](Self::before_done)).
    fn lane_done(&mut self, main: usize, ticket: &Ticket, deferred: bool) {
        let Some(pending) = self.pending.clone() else {
            return;
        };
        let Some(Some(main_slot)) = self.slots.get_mut(main) else {
            return;
        };
        let Some(parking) = main_slot.parking.as_deref_mut() else {
            return;
        };
        let Some((key, offset)) = parking.copies.get(&ticket.offset).cloned() else {
            return;
        };
        let mut records = vec![parking.parked.released(&key, offset)];
        let park = parking.keys.entry(key.clone()).or_default();
        if deferred {
            park.head = Some(offset);
            records.push(parking.parked.head(&key, offset));
        }
        park.followers = park.followers.saturating_sub(1);
        let unparked = !park.is_parked();
        if unparked {
            parking.keys.remove(&key);
            records.push(parking.parked.cleared(&key));
        }
        parking.copies.remove(&ticket.offset);
        if !pending.append(&ticket.tp, ticket.generation, ticket.offset, records) {
            return;
        }
        let group = Arc::clone(&parking.group);
        crate::telemetry::parked(&group, if deferred { "head" } else { "released" });
        if unparked {
            crate::telemetry::parked(&group, "unparked");
        }
        if deferred && let Some(Some(lane)) = self.slots.get_mut(ticket.slot) {
            // Its next copy waits for the new head to end.
            lane.tracker.gate(&key);
        }
    }

    /// Offsets that fence a transaction of parked-topic records only: each
    /// ordered main partition's committed offset (or, before any commit,
    /// the one it was read from), else a lane's read position (committing
    /// it for the group is harmless: nothing consumes the parked topic as
    /// the group).
    fn fence(&self) -> Vec<(TopicPartition, i64)> {
        let mut fence = Vec::new();
        for slot in self.slots.iter().flatten() {
            if slot.parking.is_some()
                && let Some(offset) = slot.tracker.rewind_to()
            {
                fence.push((slot.tp.clone(), offset));
            }
        }
        if fence.is_empty() {
            for slot in self.slots.iter().flatten() {
                if slot.lane_of.is_some() {
                    let read = slot.tracker.last_received().map_or(0, |o| o + 1);
                    fence.push((slot.tp.clone(), read));
                }
            }
        }
        fence
    }

    /// What ordered retries hold now.
    fn parked_now(&self) -> ParkedNow {
        let mut now = ParkedNow::default();
        for slot in self.slots.iter().flatten() {
            if let Some(parking) = &slot.parking {
                now.keys += parking.keys.len();
                now.copies += parking.copies.len();
                now.loading += usize::from(parking.loading.is_some());
            }
        }
        now
    }
}

impl Dispatcher {
    /// Ordered retries (call before anything is assigned; needs exactly-once).
    pub(crate) fn ordered(&self, ordered: Ordered) {
        self.lock().ordered = Some(ordered);
    }

    /// Offsets to send with a transaction that moves none (see
    /// [`State::fence`]).
    pub(crate) fn fence(&self) -> Vec<(TopicPartition, i64)> {
        self.lock().fence()
    }

    /// What ordered retries hold now (for the gauges).
    pub(crate) fn parked_now(&self) -> ParkedNow {
        self.lock().parked_now()
    }
}

#[cfg(test)]
mod tests;
