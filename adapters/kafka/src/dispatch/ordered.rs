//! The dispatcher's share of retries that keep per-key order (see
//! [`parking`](crate::parking)): a main partition's parked keys, its lane,
//! and the records each settlement adds to the transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backstop::wire;
use bytes::Bytes;

use super::{Dispatcher, Queued, State, Ticket, Tp};
use crate::names::parked_topic;
use crate::parking::{KeyPark, Loading, Parked, ParkedPartition};
use crate::transaction::Record;

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
    pub(crate) tp: Tp,
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
    lane_tp: Tp,
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
    /// On a main partition of an ordered source: its lane, loading.
    pub(super) fn open_lane(&mut self, main: usize, tp: &Tp) {
        let Some(ordered) = &self.ordered else {
            return;
        };
        if !ordered.topics.contains(&*tp.0) {
            return;
        }
        let parked = ParkedPartition {
            topic: parked_topic(&tp.0, &ordered.group),
            partition: tp.1,
        };
        let lane_tp: Tp = (Arc::from(parked.topic.as_str()), tp.1);
        let group: Arc<str> = Arc::from(ordered.group.as_str());
        self.remove(&lane_tp);
        self.track(lane_tp.clone(), false, Some(main));
        let lane_generation = self.next_generation;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("{}-{lane_generation}-{nanos}", std::process::id());
        let parking = Parking {
            lane_tp,
            lane_generation,
            parked,
            group,
            keys: HashMap::default(),
            loading: None,
            copies: HashMap::new(),
        };
        if let Some(pending) = &self.pending {
            parking.loose(pending, [parking.parked.marker(&token)]);
        }
        if let Some(Some(slot)) = self.slots.get_mut(main) {
            slot.parking = Some(Box::new(Parking {
                loading: Some(Loading::new(token)),
                ..parking
            }));
        }
    }

    /// A main partition is gone: so is its lane.
    pub(super) fn close_lane(&mut self, parking: &Parking) {
        self.remove(&parking.lane_tp);
    }

    /// The main partition of a lane.
    pub(super) fn main_of(&self, tp: &Tp) -> Option<Tp> {
        let slot = self.slots.get(*self.index.get(tp)?)?.as_ref()?;
        let main = self.slots.get(slot.lane_of?)?.as_ref()?;
        Some(main.tp.clone())
    }

    /// Loads whose marker did not come back for a while queue it again.
    pub(super) fn mark_loading_again(&mut self) {
        let Some(pending) = &self.pending else {
            return;
        };
        for slot in self.slots.iter_mut().flatten() {
            let Some(parking) = slot.parking.as_deref_mut() else {
                continue;
            };
            let Some(loading) = &mut parking.loading else {
                continue;
            };
            if loading.marked_at.elapsed() < MARK_AGAIN_AFTER {
                continue;
            }
            tracing::debug!(partition = %parking.parked.partition, topic = %parking.parked.topic, "the parked partition's load marker did not come back yet; queuing it again");
            loading.marked_at = Instant::now();
            let marker = parking.parked.marker(&loading.token);
            parking.loose(pending, [marker]);
        }
    }

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
                tracing::error!(topic = %s.tp.0, partition = s.tp.1, offset, "a message of a parked key is too large to copy to the parked topic; it runs now, out of its key's order");
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
            lane.tracker.gate(key);
        }
    }

    /// The lanes' partitions and generations, for the parked-topic reader.
    fn lanes(&self) -> Vec<Lane> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| {
                let main = self.slots.get(s.lane_of?)?.as_ref()?;
                Some(Lane {
                    tp: s.tp.clone(),
                    main: main.tp.0.clone(),
                    generation: s.tracker.generation(),
                })
            })
            .collect()
    }

    /// Offsets that fence a transaction of parked-topic records only: each
    /// ordered main partition's committed offset (or, before any commit,
    /// the one it was read from), else a lane's read position (committing
    /// it for the group is harmless: nothing consumes the parked topic as
    /// the group).
    fn fence(&self) -> Vec<(Tp, i64)> {
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

    /// Applies records read from a lane's parked partition (`at`: each
    /// one's offset there). Returns true when something was queued.
    fn lane_read(&mut self, lane: &Lane, records: Vec<(i64, Parked)>) -> bool {
        let Some(&li) = self.index.get(&lane.tp) else {
            return false;
        };
        let Some(Some(lane_slot)) = self.slots.get(li) else {
            return false;
        };
        if lane_slot.tracker.generation() != lane.generation {
            return false;
        }
        let Some(main) = lane_slot.lane_of else {
            return false;
        };
        let mut queued = false;
        for (at, record) in records {
            queued |= self.lane_record(main, li, lane.generation, at, record);
        }
        queued
    }

    fn lane_record(
        &mut self,
        main: usize,
        lane: usize,
        lane_generation: u64,
        at: i64,
        record: Parked,
    ) -> bool {
        let State { slots, pending, .. } = self;
        let Some(Some(main_slot)) = slots.get_mut(main) else {
            return false;
        };
        let main_generation = main_slot.tracker.generation();
        let Some(parking) = main_slot.parking.as_deref_mut() else {
            return false;
        };
        if let Some(loading) = &mut parking.loading {
            let mine = matches!(&record, Parked::Marker(token) if *token == loading.token);
            if !mine {
                loading.fold(record, at);
                return false;
            }
            let Some(loading) = parking.loading.take() else {
                return false;
            };
            return self.loaded((main, main_generation), (lane, lane_generation), loading);
        }
        match record {
            Parked::Follower {
                key,
                offset,
                mut message,
            } => {
                // While its key's head is in a tier, the copy waits for it.
                let gated = parking.keys.get(&key).is_some_and(|p| p.head.is_some());
                parking.copies.insert(at, (key.clone(), offset));
                if gated && let Some(Some(lane_slot)) = slots.get_mut(lane) {
                    lane_slot.tracker.gate(key);
                }
                message.meta.offset = Some(at);
                self.lane_receive(lane, lane_generation, *message)
            }
            Parked::Ended { key, offset } => {
                let Some(pending) = pending.as_ref() else {
                    return false;
                };
                let park = parking.keys.get_mut(&key);
                let Some(park) = park.filter(|p| p.head == Some(offset)) else {
                    // Not this key's head (a late copy of an older one):
                    // forgotten.
                    parking.loose(pending, [parking.parked.ended_cleared(&key, offset)]);
                    return false;
                };
                park.head = None;
                let unparked = !park.is_parked();
                // Taken note of in one transaction: no head, the `ended` gone.
                let records = [
                    parking.parked.cleared(&key),
                    parking.parked.ended_cleared(&key, offset),
                ];
                parking.loose(pending, records);
                let group = Arc::clone(&parking.group);
                crate::telemetry::parked(&group, "ended");
                if unparked {
                    parking.keys.remove(&key);
                    crate::telemetry::parked(&group, "unparked");
                }
                let mut released = Vec::new();
                if let Some(Some(lane_slot)) = slots.get_mut(lane) {
                    lane_slot.tracker.ungate(&key, &mut released);
                }
                let mut queued = false;
                for offset in released {
                    queued |= self.route(lane, lane_generation, offset);
                }
                queued
            }
            // This member's own records: what they say is already known.
            Parked::Head { .. }
            | Parked::Cleared { .. }
            | Parked::EndedCleared { .. }
            | Parked::Released { .. }
            | Parked::Marker(_) => false,
        }
    }

    /// Tracks a copy read back on its lane; true when it was queued.
    fn lane_receive(&mut self, lane: usize, generation: u64, message: backstop::Message) -> bool {
        let Some(Some(slot)) = self.slots.get_mut(lane) else {
            return false;
        };
        let Some(offset) = message.meta.offset else {
            return false;
        };
        let received = slot.tracker.receive(message, None, SystemTime::UNIX_EPOCH);
        received == super::Received::Ready && self.route(lane, generation, offset)
    }

    /// A lane read its own marker: what it folded becomes the partition's
    /// parked keys and the lane's copies, and the main messages that
    /// waited are routed.
    fn loaded(
        &mut self,
        (main, main_generation): (usize, u64),
        (lane, lane_generation): (usize, u64),
        mut loading: Loading,
    ) -> bool {
        let waiting = std::mem::take(&mut loading.waiting);
        let loaded = loading.finish();
        let State { slots, pending, .. } = self;
        let Some(Some(main_slot)) = slots.get_mut(main) else {
            return false;
        };
        let Some(parking) = main_slot.parking.as_deref_mut() else {
            return false;
        };
        if let Some(pending) = pending {
            // What the fold settled: heads that ended, `ended` records read.
            let heads = loaded.ended_heads.iter().map(|k| parking.parked.cleared(k));
            let ends = loaded
                .ends
                .iter()
                .map(|(k, o)| parking.parked.ended_cleared(k, *o));
            let records: Vec<Record> = heads.chain(ends).collect();
            parking.loose(pending, records);
        }
        let gated: Vec<Bytes> = loaded
            .keys
            .iter()
            .filter(|(_, park)| park.head.is_some())
            .map(|(key, _)| key.clone())
            .collect();
        tracing::debug!(
            topic = %parking.parked.topic,
            partition = parking.parked.partition,
            keys = loaded.keys.len(),
            copies = loaded.followers.len(),
            waiting = waiting.len(),
            "parked partition loaded"
        );
        parking.keys = loaded.keys;
        for f in &loaded.followers {
            parking.copies.insert(f.at, (f.key.clone(), f.offset));
        }
        if let Some(Some(lane_slot)) = slots.get_mut(lane) {
            for key in gated {
                lane_slot.tracker.gate(key);
            }
        }
        let mut queued = false;
        for follower in loaded.followers {
            let mut message = follower.message;
            message.meta.offset = Some(follower.at);
            queued |= self.lane_receive(lane, lane_generation, message);
        }
        for offset in waiting {
            queued |= self.route(main, main_generation, offset);
        }
        queued
    }
}

impl Dispatcher {
    /// Ordered retries (call before anything is assigned; needs exactly-once).
    pub(crate) fn ordered(&self, ordered: Ordered) {
        self.lock().ordered = Some(ordered);
    }

    /// The lanes the parked-topic reader follows now.
    pub(crate) fn lanes(&self) -> Vec<Lane> {
        self.lock().lanes()
    }

    /// Offsets to send with a transaction that moves none (see
    /// [`State::fence`]).
    pub(crate) fn fence(&self) -> Vec<(Tp, i64)> {
        self.lock().fence()
    }

    /// What ordered retries hold now (for the gauges).
    pub(crate) fn parked_now(&self) -> ParkedNow {
        self.lock().parked_now()
    }

    /// Records read from `lane`'s parked partition, in order (dropped when
    /// the lane has a newer generation since).
    pub(crate) fn lane_read(&self, lane: &Lane, records: Vec<(i64, Parked)>) {
        let queued = self.lock().lane_read(lane, records);
        if queued {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backstop::Message;
    use backstop::transaction::Transaction;

    use super::*;
    use crate::dispatch::ToCommit;
    use crate::transaction::{DeliverySlot, Pending};

    const RETRY: &str = "t.g.retry.5s";

    fn tp() -> Tp {
        (Arc::from("t"), 0)
    }

    fn msg(offset: i64, key: &str) -> Message {
        let mut m = Message::new(format!("{key}{offset}")).with_key(key.to_owned());
        m.meta.offset = Some(offset);
        m.meta.partition = Some(0);
        m.meta.source = "t".into();
        m
    }

    fn parked() -> ParkedPartition {
        ParkedPartition {
            topic: "t.g.parked".into(),
            partition: 0,
        }
    }

    /// `record` as the parked topic's reader decodes it.
    fn decode(record: Record) -> Parked {
        let key = record.message.key.clone().unwrap_or_default();
        let value = (!record.tombstone).then(|| record.message.payload.clone());
        Parked::decode(&key, value.as_deref(), record.message).expect("a parked record")
    }

    /// An ordered dispatcher over partition 0 of `t`, assigned, not loaded.
    fn assigned() -> (Arc<Dispatcher>, Arc<Pending>, Lane) {
        let d = Dispatcher::new(10, 100, usize::MAX);
        let pending = Arc::new(Pending::default());
        d.transactional(Arc::clone(&pending));
        d.ordered(Ordered::new("g", ["t".to_owned()], [RETRY.to_owned()]));
        d.assign([(tp(), false)]);
        let lanes = d.lanes();
        assert_eq!(lanes.len(), 1);
        assert_eq!(&*lanes[0].tp.0, "t.g.parked");
        (d, pending, lanes[0].clone())
    }

    /// [`assigned`], and loaded (its marker read back).
    fn loaded() -> (Arc<Dispatcher>, Arc<Pending>, Lane) {
        let (d, pending, lane) = assigned();
        let read = written(&pending, &ToCommit::default());
        assert_eq!(read.len(), 1, "the load marker");
        d.lane_read(&lane, read.into_iter().map(|(_, p)| (0, p)).collect());
        (d, pending, lane)
    }

    /// The parked-topic records a transaction over `commit` writes, in
    /// order, decoded.
    fn written(pending: &Pending, commit: &ToCommit) -> Vec<(Option<i32>, Parked)> {
        pending
            .take_covered(&commit.offsets, &commit.lanes)
            .records
            .into_iter()
            .filter(|r| r.destination == "t.g.parked")
            .map(|r| (r.partition, decode(r)))
            .collect()
    }

    /// Short names of `records`.
    fn names(records: &[(Option<i32>, Parked)]) -> Vec<String> {
        records
            .iter()
            .map(|(_, r)| match r {
                Parked::Head { key, offset } => format!("head {}@{offset}", key_of(key)),
                Parked::Follower { key, offset, .. } => format!("copy {}@{offset}", key_of(key)),
                Parked::Released { key, offset } => format!("released {}@{offset}", key_of(key)),
                Parked::Cleared { key } => format!("cleared {}", key_of(key)),
                Parked::Ended { key, offset } => format!("ended {}@{offset}", key_of(key)),
                Parked::EndedCleared { key, offset } => {
                    format!("ended-cleared {}@{offset}", key_of(key))
                }
                Parked::Marker(_) => "marker".to_owned(),
            })
            .collect()
    }

    fn key_of(key: &[u8]) -> String {
        String::from_utf8_lossy(key).into_owned()
    }

    fn slot(pending: &Arc<Pending>, ticket: &Ticket) -> DeliverySlot {
        DeliverySlot {
            pending: Arc::clone(pending),
            tp: ticket.tp.clone(),
            generation: ticket.generation,
            offset: ticket.offset,
        }
    }

    /// Takes and settles (done) whatever is ready.
    fn taken(d: &Dispatcher) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        while let Ok(Some(t)) = d.take() {
            out.push((t.ticket.tp.clone(), t.ticket.offset));
            d.settle(&t.ticket, true).unwrap();
        }
        out
    }

    /// Takes the next delivery, expecting it to be at `offset` of `tp`.
    fn next(d: &Dispatcher, tp: &Tp, offset: i64) -> super::super::Taken {
        let t = d.take().unwrap().expect("a delivery");
        assert_eq!((&t.ticket.tp, t.ticket.offset), (tp, offset));
        t
    }

    /// Defers `k@0` to a tier; returns the parked-topic records written.
    fn park_k(d: &Dispatcher, pending: &Arc<Pending>) {
        let k0 = next(d, &tp(), 0);
        slot(pending, &k0.ticket)
            .produce(RETRY, msg(0, "k"))
            .unwrap();
        d.settle(&k0.ticket, true).unwrap();
    }

    #[test]
    fn a_deferred_key_parks_its_followers_and_releases_them_in_order_when_its_head_ended() {
        let (d, pending, lane) = loaded();
        for (o, k) in [(0, "k"), (1, "j"), (2, "k"), (3, "k"), (4, "j")] {
            d.receive(tp(), msg(o, k), None, false);
        }
        park_k(&d, &pending);
        // k@2 and k@3 were parked, not handed out; j runs on.
        let handed: Vec<i64> = taken(&d).into_iter().map(|(_, o)| o).collect();
        assert_eq!(handed, [1, 4]);
        let commit = d.take_to_commit();
        assert_eq!(
            commit.offsets,
            vec![(tp(), 5)],
            "the watermark passed the parked ones"
        );
        let records = written(&pending, &commit);
        assert!(records.iter().all(|(p, _)| *p == Some(0)));
        assert_eq!(names(&records), ["head k@0", "copy k@2", "copy k@3"]);
        let copies: Vec<(i64, Parked)> = records
            .into_iter()
            .skip(1)
            .zip([10, 11])
            .map(|((_, r), at)| (at, r))
            .collect();
        d.lane_read(&lane, copies);
        assert!(taken(&d).is_empty(), "the copies wait for their head");
        // A later k on the main partition is parked too, behind them.
        d.receive(tp(), msg(5, "k"), None, false);
        assert!(taken(&d).is_empty());
        // An `ended` of another head of k changes nothing (and is deleted).
        d.lane_read(&lane, vec![(12, decode(parked().ended(b"k", 7)))]);
        assert!(taken(&d).is_empty());
        d.lane_read(&lane, vec![(13, decode(parked().ended(b"k", 0)))]);
        let lane_tp = lane.tp.clone();
        let first = next(&d, &lane_tp, 10);
        assert_eq!(first.message.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            first.message.meta.retry_of.as_deref(),
            None,
            "set by the reader"
        );
        assert!(d.take().unwrap().is_none(), "one at a time, in order");
        d.settle(&first.ticket, true).unwrap();
        let second = next(&d, &lane_tp, 11);
        // This copy goes to a tier in turn: it is k's new head.
        slot(&pending, &second.ticket)
            .produce(RETRY, msg(3, "k"))
            .unwrap();
        d.settle(&second.ticket, true).unwrap();
        let commit = d.take_to_commit();
        assert_eq!(commit.lanes, vec![(lane_tp, vec![10, 11])]);
        assert_eq!(
            names(&written(&pending, &commit)),
            [
                "copy k@5",
                "ended-cleared k@7",
                "cleared k",
                "ended-cleared k@0",
                "released k@2",
                "released k@3",
                "head k@3",
            ],
            "k@5 parked, the stale ended deleted, k@0's end noted, k@2 ran, k@3 went on to a tier"
        );
    }

    #[test]
    fn a_copy_that_ran_is_committed_at_once_not_behind_a_waiting_one_and_before_what_follows_it() {
        let (d, pending, lane) = loaded();
        for (o, k) in [(0, "k"), (1, "j"), (2, "k"), (3, "j")] {
            d.receive(tp(), msg(o, k), None, false);
        }
        park_k(&d, &pending);
        let j1 = next(&d, &tp(), 1);
        slot(&pending, &j1.ticket)
            .produce(RETRY, msg(1, "j"))
            .unwrap();
        d.settle(&j1.ticket, true).unwrap();
        let commit = d.take_to_commit();
        assert_eq!(
            names(&written(&pending, &commit)),
            ["head k@0", "copy k@2", "head j@1", "copy j@3"],
            "in the order they were made"
        );
        // Lane: k's copy first (held: k@0 is still in its tier), then j's.
        d.lane_read(
            &lane,
            vec![
                (20, decode(parked().follower(&msg(2, "k"), b"k", 2))),
                (21, decode(parked().follower(&msg(3, "j"), b"j", 3))),
                (22, decode(parked().ended(b"j", 1))),
            ],
        );
        let j3 = next(&d, &lane.tp, 21);
        d.settle(&j3.ticket, true).unwrap();
        // j runs normally again: its next message is not parked.
        d.receive(tp(), msg(4, "j"), None, false);
        let j4 = next(&d, &tp(), 4);
        slot(&pending, &j4.ticket)
            .produce("out", msg(4, "j"))
            .unwrap();
        d.settle(&j4.ticket, true).unwrap();
        let commit = d.take_to_commit();
        // j's records are not held behind k's waiting copy (lane offset 20),
        // and "j has no head" comes before anything j@4 did.
        let all = pending.take_covered(&commit.offsets, &commit.lanes).records;
        let order: Vec<String> = all
            .into_iter()
            .map(|r| {
                if r.destination == "out" {
                    "out j@4".to_owned()
                } else {
                    names(&[(None, decode(r))]).remove(0)
                }
            })
            .collect();
        assert_eq!(
            order,
            [
                "cleared j",
                "ended-cleared j@1",
                "released j@3",
                "cleared j",
                "out j@4"
            ]
        );
    }

    #[test]
    fn keyed_messages_wait_until_the_partition_is_loaded_then_follow_what_it_holds() {
        let (d, pending, lane) = assigned();
        d.receive(tp(), msg(9, "k"), None, false);
        let mut keyless = Message::new("x");
        keyless.meta.offset = Some(10);
        d.receive(tp(), keyless, None, false);
        assert_eq!(taken(&d), vec![(tp(), 10)], "only the keyless one");
        // What the parked partition holds: k parked behind offset 7 (ended
        // since), with one copy still to run; j's head at 5 is live, and a
        // late `ended` of an older head of j does not end it.
        let marker = written(&pending, &ToCommit::default()).pop().unwrap().1;
        let mut old = msg(8, "k");
        old.payload = "old".into();
        let p = parked();
        d.lane_read(
            &lane,
            vec![
                (0, decode(p.head(b"k", 7))),
                (1, decode(p.follower(&old, b"k", 8))),
                (2, decode(p.head(b"j", 5))),
                (3, decode(p.ended(b"j", 4))),
                (4, decode(p.ended(b"k", 7))),
                (5, marker),
            ],
        );
        // The copy runs first; k@9 of this partition is parked behind it.
        let first = next(&d, &lane.tp, 1);
        assert_eq!(&first.message.payload[..], b"old");
        assert!(d.take().unwrap().is_none());
        d.settle(&first.ticket, true).unwrap();
        assert!(d.take().unwrap().is_none(), "k@9 was parked behind it");
        let commit = d.take_to_commit();
        assert_eq!(commit.offsets, vec![(tp(), 11)]);
        let records = names(&written(&pending, &commit));
        assert!(records.contains(&"copy k@9".to_owned()), "{records:?}");
        assert!(records.contains(&"cleared k".to_owned()), "{records:?}");
        assert!(
            records.contains(&"ended-cleared j@4".to_owned()),
            "{records:?}"
        );
        assert!(
            !records.contains(&"cleared j".to_owned()),
            "j's head is live: {records:?}"
        );
        // j is still parked: its next message is copied.
        d.receive(tp(), msg(11, "j"), None, false);
        assert!(d.take().unwrap().is_none());
    }

    #[test]
    fn a_rewind_of_a_lane_loads_its_partition_again() {
        let (d, pending, lane) = loaded();
        d.receive(tp(), msg(0, "k"), None, false);
        let rewound = d.rewind(std::slice::from_ref(&lane.tp));
        assert_eq!(rewound, vec![(tp(), 0)], "the main partition is read again");
        let again = d.lanes();
        assert_ne!(again[0].generation, lane.generation, "a new lane");
        assert_eq!(
            names(&written(&pending, &ToCommit::default())),
            ["marker"],
            "a new marker (the old lane's records are dropped)"
        );
        d.receive(tp(), msg(0, "k"), None, false);
        assert!(d.take().unwrap().is_none(), "loading again");
    }

    #[test]
    fn records_of_a_partition_this_member_lost_are_not_written() {
        let (d, pending, lane) = loaded();
        d.receive(tp(), msg(0, "k"), None, false);
        park_k(&d, &pending);
        d.lane_read(&lane, vec![(3, decode(parked().ended(b"k", 0)))]);
        d.revoke([("t", 0)]);
        assert!(
            written(&pending, &ToCommit::default()).is_empty(),
            "k's clean-up after its head ended goes with the partition"
        );
    }

    #[test]
    fn a_retry_copy_that_ends_tells_its_main_partition_and_one_deferred_again_does_not() {
        let (d, pending, _) = loaded();
        let retry: Tp = (Arc::from(RETRY), 2);
        d.assign([(retry.clone(), true)]);
        let copy = |offset: i64, key: &str| {
            let mut m = msg(offset, key)
                .with_header(wire::ORIGINAL_PARTITION, "0")
                .with_header(wire::ORIGINAL_OFFSET, "40");
            m.meta.source = RETRY.into();
            m.meta.partition = Some(2);
            m.meta.retry_of = Some("t".into());
            m
        };
        d.receive(retry.clone(), copy(5, "k"), None, true);
        d.receive(retry.clone(), copy(6, "j"), None, true);
        let k = d.take().unwrap().unwrap();
        let j = d.take().unwrap().unwrap();
        d.settle(&k.ticket, true).unwrap();
        // Deferred through a tier the source does not subscribe to: still a
        // deferral.
        slot(&pending, &j.ticket)
            .produce("t.g.retry.1h", msg(40, "j"))
            .unwrap();
        d.settle(&j.ticket, true).unwrap();
        let records = written(&pending, &d.take_to_commit());
        assert_eq!(names(&records), ["ended k@40"], "only k's head ended");
        assert_eq!(records[0].0, Some(0));
    }

    #[test]
    fn a_transaction_of_parked_records_only_is_fenced_by_the_partitions_offsets() {
        let (d, _pending, lane) = loaded();
        assert_eq!(
            d.fence(),
            vec![(lane.tp.clone(), 0)],
            "nothing read on the main partition: the lane's (no copy read yet)"
        );
        d.receive(tp(), msg(7, "k"), None, false);
        assert_eq!(
            d.fence(),
            vec![(tp(), 7)],
            "where the main partition was read from"
        );
        taken(&d);
        let commit = d.take_to_commit();
        d.mark_committed(&commit.offsets);
        assert_eq!(d.fence(), vec![(tp(), 8)], "its committed offset");
    }

    #[test]
    fn a_finished_lane_copy_is_forgotten_at_once_behind_a_waiting_one() {
        let (d, pending, lane) = loaded();
        d.receive(tp(), msg(0, "k"), None, false);
        park_k(&d, &pending);
        d.lane_read(
            &lane,
            vec![
                (5, decode(parked().follower(&msg(1, "k"), b"k", 1))),
                (6, decode(parked().follower(&msg(2, "j"), b"j", 2))),
            ],
        );
        let j = next(&d, &lane.tp, 6);
        d.settle(&j.ticket, true).unwrap();
        assert_eq!(d.pending().0, 1, "only k's waiting copy is held");
    }
}
