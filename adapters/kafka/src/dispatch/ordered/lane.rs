//! A main partition's lane: its partition of the parked topic, tracked in
//! a slot of its own and read back by the parked-topic reader. Opened with
//! the main partition (loading until its own marker is read back), closed
//! with it; what it reads becomes the partition's parked keys and the
//! copies that run in their keys' order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Lane, MARK_AGAIN_AFTER, Parking};
use crate::dispatch::{Dispatcher, State};
use crate::names::parked_topic;
use crate::parking::{Loading, Parked, ParkedPartition};
use crate::topic_partition::TopicPartition;
use crate::tracker::Arrival;
use crate::transaction::Record;

impl State {
    /// On a main partition of an ordered source: its lane, loading.
    pub(in crate::dispatch) fn open_lane(&mut self, main: usize, tp: &TopicPartition) {
        let Some(ordered) = &self.ordered else {
            return;
        };
        if !ordered.topics.contains(&*tp.topic) {
            return;
        }
        let parked = ParkedPartition {
            topic: parked_topic(&tp.topic, &ordered.group),
            partition: tp.partition,
        };
        let lane_tp = TopicPartition::new(parked.topic.as_str(), tp.partition);
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
    pub(in crate::dispatch) fn close_lane(&mut self, parking: &Parking) {
        self.remove(&parking.lane_tp);
    }

    /// The main partition of a lane.
    pub(in crate::dispatch) fn main_of(&self, tp: &TopicPartition) -> Option<TopicPartition> {
        let slot = self.slots.get(*self.index.get(tp)?)?.as_ref()?;
        let main = self.slots.get(slot.lane_of?)?.as_ref()?;
        Some(main.tp.clone())
    }

    /// Loads whose marker did not come back for a while queue it again.
    pub(in crate::dispatch) fn mark_loading_again(&mut self) {
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

    /// The lanes' partitions and generations, for the parked-topic reader.
    fn lanes(&self) -> Vec<Lane> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| {
                let main = self.slots.get(s.lane_of?)?.as_ref()?;
                Some(Lane {
                    tp: s.tp.clone(),
                    main: main.tp.topic.clone(),
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
                    lane_slot.tracker.gate(&key);
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
        let arrival = slot.tracker.receive(message, None, SystemTime::UNIX_EPOCH);
        arrival == Arrival::Ready && self.route(lane, generation, offset)
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
                lane_slot.tracker.gate(&key);
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
