//! The dispatcher's share of retries that keep per-key order (see
//! [`parking`](crate::parking)): a main partition's parked keys, its lane,
//! and the records each settlement adds to the transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backstop::wire;
use bytes::Bytes;

use super::{Dispatcher, Queued, State, Ticket, Tp};
use crate::parking::{KeyPark, Loading, Parked, ParkedPartition, parked_topic};

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
        }
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

/// A main partition's parked keys; see [`parking`](crate::parking).
#[derive(Debug)]
pub(crate) struct Parking {
    lane_tp: Tp,
    parked: ParkedPartition,
    /// The consumer group (the metrics' label).
    group: Arc<str>,
    keys: HashMap<Bytes, KeyPark>,
    /// Until its own marker is read back: nothing keyed is handed out.
    loading: Option<Loading>,
    /// Per lane offset, the copy's key and main offset.
    copies: HashMap<i64, (Bytes, i64)>,
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
        let ordered_group = ordered.group.clone();
        self.remove(&lane_tp);
        self.track(lane_tp.clone(), false, Some(main));
        let generation = self.next_generation;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("{}-{generation}-{nanos}", std::process::id());
        if let Some(pending) = &self.pending {
            pending.add_loose([parked.marker(&token)]);
        }
        if let Some(Some(slot)) = self.slots.get_mut(main) {
            slot.parking = Some(Box::new(Parking {
                lane_tp,
                parked,
                group: Arc::from(ordered_group.as_str()),
                keys: HashMap::new(),
                loading: Some(Loading::new(token)),
                copies: HashMap::new(),
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
            if let Some(loading) = &mut parking.loading
                && loading.marked_at.elapsed() >= MARK_AGAIN_AFTER
            {
                tracing::debug!(partition = %parking.parked.partition, topic = %parking.parked.topic, "the parked partition's load marker did not come back; queuing it again");
                pending.add_loose([parking.parked.marker(&loading.token)]);
                loading.marked_at = Instant::now();
            }
        }
    }

    /// A message of `slot` became ready: it is queued, unless its
    /// partition parks its key (then a copy of it goes to the parked topic
    /// in its transaction and it is done without running; the next message
    /// of its key is routed the same way) or is loading (it waits).
    /// Returns true when something was queued.
    pub(super) fn route(&mut self, slot: usize, generation: u64, offset: i64) -> bool {
        let mut work = std::collections::VecDeque::from([offset]);
        let mut queued = false;
        while let Some(offset) = work.pop_front() {
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
            let Some((parking, key, pending)) = parked else {
                ready.push_back(Queued {
                    slot,
                    generation,
                    offset,
                });
                queued = true;
                continue;
            };
            let Some(message) = s.tracker.message(offset) else {
                continue;
            };
            let copy = parking.parked.follower(message, &key, offset);
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
            work.extend(released);
        }
        queued
    }

    /// Before a delivery settles done: what ordered retries add to its
    /// transaction. A main message that went to a retry tier makes its key
    /// parked; a lane copy that ran releases its key's next one (or, gone
    /// to a retry tier, becomes its key's head); a retry-topic message that
    /// did not go on to another tier ended its key's head.
    pub(super) fn before_done(&mut self, ticket: &Ticket) {
        let (Some(ordered), Some(pending)) = (&self.ordered, &self.pending) else {
            return;
        };
        let Some(Some(slot)) = self.slots.get(ticket.slot) else {
            return;
        };
        if slot.tracker.generation() != ticket.generation {
            return;
        }
        let deferred = pending.inspect(&ticket.tp, ticket.offset, |records| {
            records
                .iter()
                .any(|r| ordered.retry.contains(&r.destination))
        });
        if let Some(main) = slot.lane_of {
            self.lane_done(main, ticket, deferred);
            return;
        }
        let Some(message) = slot.tracker.message(ticket.offset) else {
            return;
        };
        let Some(key) = message.key.clone() else {
            return;
        };
        if slot.tracker.is_delayed() {
            if deferred {
                return;
            }
            // A retry copy ended (handled, dead-lettered, a duplicate): its
            // key's head, if it was one, is over on its main partition.
            let Some(main) = message.meta.retry_of.as_deref() else {
                return;
            };
            if !ordered.topics.contains(main) {
                return;
            }
            let position = |name| message.header(name).and_then(|v| v.parse().ok());
            let (Some(partition), Some(offset)) = (
                position(wire::ORIGINAL_PARTITION),
                position(wire::ORIGINAL_OFFSET),
            ) else {
                return;
            };
            let Ok(partition) = i32::try_from(partition) else {
                return;
            };
            let parked = ParkedPartition {
                topic: parked_topic(main, &ordered.group),
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
        let Some(Some(main_slot)) = self.slots.get_mut(main) else {
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
                if gated && let Some(Some(lane_slot)) = self.slots.get_mut(lane) {
                    lane_slot.tracker.gate(key);
                }
                message.meta.offset = Some(at);
                self.lane_receive(lane, lane_generation, *message)
            }
            Parked::Ended { key, offset } => {
                let Some(park) = parking.keys.get_mut(&key) else {
                    return false;
                };
                if park.head != Some(offset) {
                    return false;
                }
                park.head = None;
                crate::telemetry::parked(&parking.group, "ended");
                if !park.is_parked() {
                    parking.keys.remove(&key);
                    if let Some(pending) = &self.pending {
                        pending.add_loose([parking.parked.cleared(&key)]);
                    }
                    crate::telemetry::parked(&parking.group, "unparked");
                }
                let mut released = Vec::new();
                if let Some(Some(lane_slot)) = self.slots.get_mut(lane) {
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
            pending.add_loose(loaded.clear.iter().map(|k| parking.parked.cleared(k)));
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

    /// An ordered dispatcher with partition 0 of `t` assigned and loaded
    /// (its marker read back).
    fn loaded() -> (Arc<Dispatcher>, Arc<Pending>, Lane) {
        let d = Dispatcher::new(10, 100, usize::MAX);
        let pending = Arc::new(Pending::default());
        d.transactional(Arc::clone(&pending));
        d.ordered(Ordered::new("g", ["t".to_owned()], [RETRY.to_owned()]));
        d.assign([(tp(), false)]);
        let lanes = d.lanes();
        assert_eq!(lanes.len(), 1);
        assert_eq!(&*lanes[0].tp.0, "t.g.parked");
        let lane = lanes[0].clone();
        let read = written(&pending, &[]);
        assert_eq!(read.len(), 1, "the load marker");
        d.lane_read(&lane, read.into_iter().map(|(_, p)| (0, p)).collect());
        (d, pending, lane)
    }

    /// The records committed below `watermarks` (and the loose ones),
    /// decoded as the parked topic's reader decodes them.
    fn written(pending: &Pending, watermarks: &[(Tp, i64)]) -> Vec<(Option<i32>, Parked)> {
        pending
            .take_covered(watermarks)
            .records
            .into_iter()
            .filter(|r| r.destination == "t.g.parked")
            .map(|r| {
                let key = r.message.key.clone().unwrap_or_default();
                let value = (!r.tombstone).then_some(&r.message.payload[..]);
                let parsed = Parked::decode(&key, value, r.message.clone()).expect("parked");
                (r.partition, parsed)
            })
            .collect()
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

    #[test]
    fn a_deferred_key_parks_its_followers_and_releases_them_in_order_when_its_head_ended() {
        let (d, pending, lane) = loaded();
        for (o, k) in [(0, "k"), (1, "j"), (2, "k"), (3, "k"), (4, "j")] {
            d.receive(tp(), msg(o, k), None, false);
        }
        let k0 = d.take().unwrap().unwrap();
        assert_eq!(k0.ticket.offset, 0);
        slot(&pending, &k0.ticket)
            .produce(RETRY, msg(0, "k"))
            .unwrap();
        d.settle(&k0.ticket, true).unwrap();
        // k@2 and k@3 were parked, not handed out; j runs on.
        let mut handed = Vec::new();
        while let Ok(Some(t)) = d.take() {
            handed.push(t.ticket.offset);
            d.settle(&t.ticket, true).unwrap();
        }
        assert_eq!(handed, [1, 4]);
        let commit = d.take_to_commit();
        assert_eq!(
            commit.offsets,
            vec![(tp(), 5)],
            "the watermark passed the parked ones"
        );
        let records = written(&pending, &commit.offsets);
        assert!(records.iter().all(|(p, _)| *p == Some(0)));
        let kinds: Vec<String> = records
            .iter()
            .map(|(_, r)| match r {
                Parked::Head { offset, .. } => format!("head {offset}"),
                Parked::Follower { offset, .. } => format!("copy {offset}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["head 0", "copy 2", "copy 3"]);
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
        // An `ended` for another head of k changes nothing.
        let parked = ParkedPartition {
            topic: "t.g.parked".into(),
            partition: 0,
        };
        let ended = |o| {
            let r = parked.ended(b"k", o);
            let value = r.message.payload.clone();
            Parked::decode(b"h:k", Some(&value[..]), r.message).unwrap()
        };
        d.lane_read(&lane, vec![(12, ended(7))]);
        assert!(taken(&d).is_empty());
        d.lane_read(&lane, vec![(13, ended(0))]);
        let first = d.take().unwrap().unwrap();
        assert_eq!(
            (&*first.ticket.tp.0, first.ticket.offset),
            ("t.g.parked", 10)
        );
        assert_eq!(first.message.key.as_deref(), Some(&b"k"[..]));
        assert!(d.take().unwrap().is_none(), "one at a time, in order");
        d.settle(&first.ticket, true).unwrap();
        let second = d.take().unwrap().unwrap();
        assert_eq!(second.ticket.offset, 11);
        // This copy goes to a tier in turn: it is k's new head.
        slot(&pending, &second.ticket)
            .produce(RETRY, msg(3, "k"))
            .unwrap();
        d.settle(&second.ticket, true).unwrap();
        let commit = d.take_to_commit();
        assert_eq!(commit.lanes, vec![(lane.tp.clone(), 12)]);
        let mut all = commit.offsets.clone();
        all.extend(commit.lanes.clone());
        let kinds: Vec<String> = written(&pending, &all)
            .iter()
            .map(|(_, r)| match r {
                Parked::Head { offset, .. } => format!("head {offset}"),
                Parked::Follower { offset, .. } => format!("copy {offset}"),
                Parked::Released { offset, .. } => format!("released {offset}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["copy 5", "released 2", "released 3", "head 3"],
            "k@5 parked, k@2 ran, k@3 went on to a tier"
        );
    }

    #[test]
    fn keyed_messages_wait_until_the_partition_is_loaded_and_keyless_ones_never_park() {
        let d = Dispatcher::new(10, 100, usize::MAX);
        let pending = Arc::new(Pending::default());
        d.transactional(Arc::clone(&pending));
        d.ordered(Ordered::new("g", ["t".to_owned()], [RETRY.to_owned()]));
        d.assign([(tp(), false)]);
        let lane = d.lanes()[0].clone();
        d.receive(tp(), msg(0, "k"), None, false);
        let mut keyless = Message::new("x");
        keyless.meta.offset = Some(1);
        d.receive(tp(), keyless, None, false);
        assert_eq!(taken(&d), vec![(tp(), 1)], "only the keyless one");
        // What a predecessor left: k parked behind offset 7 (ended since),
        // with one copy still to run.
        let parked = ParkedPartition {
            topic: "t.g.parked".into(),
            partition: 0,
        };
        let decode = |r: crate::transaction::Record| {
            let key = r.message.key.clone().unwrap_or_default();
            let value = (!r.tombstone).then_some(r.message.payload.to_vec());
            Parked::decode(&key, value.as_deref(), r.message).unwrap()
        };
        let marker = written(&pending, &[]).pop().unwrap().1;
        let mut old = msg(8, "k");
        old.payload = "old".into();
        d.lane_read(
            &lane,
            vec![
                (0, decode(parked.head(b"k", 7))),
                (1, decode(parked.follower(&old, b"k", 8))),
                (2, decode(parked.ended(b"k", 7))),
                (3, marker),
            ],
        );
        // The predecessor's copy runs first; k@0 of this partition waits behind it.
        let first = d.take().unwrap().unwrap();
        assert_eq!(&first.message.payload[..], b"old");
        assert!(d.take().unwrap().is_none());
        d.settle(&first.ticket, true).unwrap();
        assert!(d.take().unwrap().is_none(), "k@0 was parked behind it");
    }

    #[test]
    fn a_rewind_of_a_lane_loads_its_partition_again() {
        let (d, pending, lane) = loaded();
        d.receive(tp(), msg(0, "k"), None, false);
        let rewound = d.rewind(std::slice::from_ref(&lane.tp));
        assert_eq!(rewound, vec![(tp(), 0)], "the main partition is read again");
        let again = d.lanes();
        assert_ne!(again[0].generation, lane.generation, "a new lane");
        assert_eq!(written(&pending, &[]).len(), 1, "a new marker");
        d.receive(tp(), msg(0, "k"), None, false);
        assert!(d.take().unwrap().is_none(), "loading again");
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
        slot(&pending, &j.ticket)
            .produce(RETRY, msg(40, "j"))
            .unwrap();
        d.settle(&j.ticket, true).unwrap();
        let commit = d.take_to_commit();
        let records = written(&pending, &commit.offsets);
        assert_eq!(records.len(), 1, "only k's head ended");
        assert!(
            matches!(&records[0], (Some(0), Parked::Ended { key, offset: 40 }) if &key[..] == b"k")
        );
    }
}
