//! The per-partition offset tracker: what was received, what runs, what is
//! done, and how far the committed offset may go.
//!
//! Offsets have gaps (transaction markers, compaction), so the watermark runs
//! over the offsets actually received: it is the last offset of the longest
//! done prefix, plus one, and it never passes a message that is still held,
//! running or failed. Inside the partition, a message with key K is handed
//! out only when it is the oldest unfinished message with key K (per-key
//! order); messages of other keys, and keyless ones, run concurrently. A
//! message of a retry topic is also held until its due time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use backstop::Message;
use bytes::Bytes;

use self::window::Window;

mod window;

/// Where one tracked message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Waiting behind an earlier message of its key, or for its due time.
    Held,
    /// Queued to be handed out.
    Ready,
    /// Handed out, not settled yet.
    InFlight,
    /// Settled; only waits for the watermark to pass it.
    Done,
}

#[derive(Debug)]
struct Entry {
    /// The message (shared with its delivery while in flight); handed back
    /// once done (see [`PartitionTracker::complete`]).
    message: Option<Arc<Message>>,
    /// What the message counts for against the byte bound (computed once).
    size: usize,
    /// The message key's hash ([`PartitionTracker::key_of`]), if it has a key.
    key: Option<u64>,
    due: Option<SystemTime>,
    status: Status,
}

/// What [`PartitionTracker::receive`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Already seen (a refetch after a pause): ignored.
    Duplicate,
    /// Ready to be handed out now.
    Ready,
    /// Held behind its key or its due time.
    Held,
}

/// The bookkeeping of one assigned partition; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct PartitionTracker {
    generation: u64,
    delayed: bool,
    entries: Window<Entry>,
    /// Offsets waiting per key, by the key's hash: an entry per message
    /// received, a lookup per message completed, and no copy of the key.
    /// Two keys whose 64-bit hashes meet (about one pair in 2^64) are
    /// ordered as one key: the order of each is kept, they only run one
    /// after the other.
    keys: HashMap<u64, KeyQueue, foldhash::fast::RandomState>,
    /// Hashes the keys (seeded per tracker: keys come from messages).
    hasher: foldhash::fast::RandomState,
    /// Keys (by hash) whose messages wait even when first in line (a parked
    /// lane's keys whose head is in a retry tier; see [`parking`](crate::parking)).
    gated: HashSet<u64, foldhash::fast::RandomState>,
    /// A lane's: a finished message is forgotten at once (a lane has no
    /// watermark; see [`parking`](crate::parking)).
    forget_done: bool,
    last_received: Option<i64>,
    /// The first offset received under this assignment.
    first_received: Option<i64>,
    watermark: Option<i64>,
    stored: Option<i64>,
    committed: Option<i64>,
    not_due: usize,
    bytes: usize,
    paused: bool,
}

impl PartitionTracker {
    /// A tracker for one assignment of a partition. `delayed` partitions
    /// (retry topics) hold each message until its due time.
    pub(crate) fn new(generation: u64, delayed: bool) -> Self {
        PartitionTracker {
            generation,
            delayed,
            entries: Window::default(),
            keys: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
            gated: HashSet::default(),
            forget_done: false,
            last_received: None,
            first_received: None,
            watermark: None,
            stored: None,
            committed: None,
            not_due: 0,
            bytes: 0,
            paused: false,
        }
    }

    /// A tracker for a lane (a parked partition read back): no watermark,
    /// finished messages forgotten at once, per-key order kept.
    pub(crate) fn lane(generation: u64) -> Self {
        PartitionTracker {
            forget_done: true,
            ..PartitionTracker::new(generation, false)
        }
    }

    /// The hash a message key is tracked by.
    fn key_of(&self, key: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// The assignment generation: acks of an older one are stale.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// True for a retry topic's partition.
    pub(crate) fn is_delayed(&self) -> bool {
        self.delayed
    }

    /// Bytes of the messages still held (not yet done), approximately.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages received and not yet passed by the watermark.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing is held, queued or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first offset received and not finished yet (held, queued,
    /// running or failed), if any: the offset a restart resumes at.
    pub(crate) fn first_unfinished(&self) -> Option<i64> {
        self.entries.first().map(|(offset, _)| offset)
    }

    /// The last offset received, if any.
    pub(crate) fn last_received(&self) -> Option<i64> {
        self.last_received
    }

    /// Whether the consumer paused this partition.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Records that the consumer paused or resumed this partition.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Held messages whose due time has not come yet.
    pub(crate) fn not_due(&self) -> usize {
        self.not_due
    }

    /// Tracks a received message (its `meta.offset` must be set); `due` is
    /// honoured only on delayed partitions.
    pub(crate) fn receive(
        &mut self,
        message: impl Into<Arc<Message>>,
        due: Option<SystemTime>,
        now: SystemTime,
    ) -> Arrival {
        let message = message.into();
        let Some(offset) = message.meta.offset else {
            return Arrival::Duplicate;
        };
        if self.last_received.is_some_and(|last| offset <= last) {
            return Arrival::Duplicate;
        }
        self.last_received = Some(offset);
        self.first_received.get_or_insert(offset);
        // Only a future due time on a delayed partition holds the message.
        let due = due.filter(|d| self.delayed && *d > now);
        let not_due = due.is_some();
        let key = message.key.as_deref().map(|k| self.key_of(k));
        let head = match key {
            Some(k) => match self.keys.entry(k) {
                std::collections::hash_map::Entry::Occupied(mut queue) => {
                    queue.get_mut().push_back(offset);
                    false
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(KeyQueue::new(offset));
                    true
                }
            },
            None => true,
        };
        let gated = key.is_some_and(|k| self.gated.contains(&k));
        let status = if head && !not_due && !gated {
            Status::Ready
        } else {
            Status::Held
        };
        if not_due {
            self.not_due += 1;
        }
        let size = size_of_message(&message);
        self.bytes += size;
        self.entries.push(
            offset,
            Entry {
                message: Some(message),
                size,
                key,
                due,
                status,
            },
        );
        match status {
            Status::Ready => Arrival::Ready,
            _ => Arrival::Held,
        }
    }

    /// Hands out a ready message: it is in flight until settled.
    pub(crate) fn take(&mut self, offset: i64) -> Option<Arc<Message>> {
        let entry = self.entries.get_mut(offset)?;
        if entry.status != Status::Ready {
            return None;
        }
        entry.status = Status::InFlight;
        entry.message.as_ref().map(Arc::clone)
    }

    /// Settles an in-flight message as done. Returns false if it was not in
    /// flight. Offsets that became ready (the next message of its key) are
    /// appended to `released`; the tracker's share of the message is put in
    /// `freed`, for the poll thread that allocated it to drop (a message
    /// freed on the thread that allocated it costs no allocator lock).
    pub(crate) fn complete(
        &mut self,
        offset: i64,
        released: &mut Vec<i64>,
        freed: &mut Option<Arc<Message>>,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(offset) else {
            return false;
        };
        if entry.status != Status::InFlight {
            return false;
        }
        entry.status = Status::Done;
        if let Some(done) = entry.message.take() {
            self.bytes = self.bytes.saturating_sub(entry.size);
            *freed = Some(done);
        }
        if let Some(key) = entry.key {
            self.release_next_of_key(key, offset, released);
        }
        if self.forget_done {
            self.entries.remove(offset);
            return true;
        }
        while let Some((_, first)) = self.entries.first() {
            if first.status != Status::Done {
                break;
            }
            if let Some((done, _)) = self.entries.pop_first() {
                self.watermark = Some(done + 1);
            }
        }
        if self.entries.is_empty()
            && let Some(last) = self.last_received
        {
            self.watermark = Some(last + 1);
        }
        true
    }

    fn release_next_of_key(&mut self, key: u64, offset: i64, released: &mut Vec<i64>) {
        let Some(queue) = self.keys.get_mut(&key) else {
            return;
        };
        if queue.front() == offset && !queue.pop_front() {
            self.keys.remove(&key);
            return;
        }
        let next = queue.front();
        if self.gated.contains(&key) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(next)
            && entry.status == Status::Held
            && entry.due.is_none_or(|d| d <= SystemTime::now())
        {
            if entry.due.take().is_some() {
                self.not_due = self.not_due.saturating_sub(1);
            }
            entry.status = Status::Ready;
            released.push(next);
        }
    }

    /// True when the message at `offset` is handed out and not settled.
    pub(crate) fn is_in_flight(&self, offset: i64) -> bool {
        self.entries
            .get(offset)
            .is_some_and(|e| e.status == Status::InFlight)
    }

    /// The message at `offset`, while the tracker holds it (not done).
    pub(crate) fn message(&self, offset: i64) -> Option<&Arc<Message>> {
        self.entries.get(offset)?.message.as_ref()
    }

    /// Settles a ready message as done without running it (its key is
    /// parked: a copy of it was made instead). Returns false if it was not
    /// ready; like [`complete`](Self::complete) otherwise.
    pub(crate) fn park_done(
        &mut self,
        offset: i64,
        released: &mut Vec<i64>,
        freed: &mut Option<Arc<Message>>,
    ) -> bool {
        match self.entries.get_mut(offset) {
            Some(entry) if entry.status == Status::Ready => entry.status = Status::InFlight,
            _ => return false,
        }
        self.complete(offset, released, freed)
    }

    /// Holds the messages of `key` from now on, even the first in line.
    pub(crate) fn gate(&mut self, key: &[u8]) {
        let key = self.key_of(key);
        self.gated.insert(key);
    }

    /// Lets the messages of `key` run again: the first in line, if held,
    /// is appended to `released`.
    pub(crate) fn ungate(&mut self, key: &[u8], released: &mut Vec<i64>) {
        let key = self.key_of(key);
        if !self.gated.remove(&key) {
            return;
        }
        let Some(next) = self.keys.get(&key).map(KeyQueue::front) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(next)
            && entry.status == Status::Held
            && entry.due.is_none()
        {
            entry.status = Status::Ready;
            released.push(next);
        }
    }

    /// Puts an in-flight message back to be handed out again (a nack with
    /// requeue, or a dropped delivery). Returns false if it was not in flight.
    pub(crate) fn requeue(&mut self, offset: i64) -> bool {
        let Some(entry) = self.entries.get_mut(offset) else {
            return false;
        };
        if entry.status != Status::InFlight {
            return false;
        }
        entry.status = Status::Ready;
        if let Some(message) = &mut entry.message {
            // Copied only if the settled delivery's message is still held.
            Arc::make_mut(message).meta.redelivered = true;
        }
        true
    }

    /// Releases held messages whose due time came (delayed partitions):
    /// those first in line for their key are appended to `released`.
    pub(crate) fn release_due(&mut self, now: SystemTime, released: &mut Vec<i64>) {
        if self.not_due == 0 {
            return;
        }
        for (offset, entry) in self.entries.iter_mut() {
            let Some(due) = entry.due else { continue };
            if due > now {
                continue;
            }
            entry.due = None;
            self.not_due = self.not_due.saturating_sub(1);
            if entry.status != Status::Held {
                continue;
            }
            let head = match entry.key {
                Some(k) => self.keys.get(&k).map(KeyQueue::front) == Some(offset),
                None => true,
            };
            if head {
                entry.status = Status::Ready;
                released.push(offset);
            }
        }
    }

    /// The earliest due time of a held message, if any.
    pub(crate) fn next_due(&self) -> Option<SystemTime> {
        if self.not_due == 0 {
            return None;
        }
        self.entries.iter().filter_map(|(_, e)| e.due).min()
    }

    /// Moves the watermark to `position` when nothing is tracked: the
    /// offsets in between were never delivered (control records at the end
    /// of the partition).
    pub(crate) fn advance_idle(&mut self, position: i64) {
        if self.entries.is_empty()
            && self.last_received.is_some()
            && self.watermark.is_none_or(|w| position > w)
        {
            self.watermark = Some(position);
        }
    }

    /// The offset to store next (last done + 1), if it moved since the last store.
    pub(crate) fn to_store(&self) -> Option<i64> {
        self.watermark
            .filter(|w| self.stored.is_none_or(|s| *w > s))
    }

    /// Records that `offset` was stored.
    pub(crate) fn mark_stored(&mut self, offset: i64) {
        self.stored = Some(offset);
    }

    /// The offset to commit (last done + 1), if it moved since the last commit.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        self.watermark
            .filter(|w| self.committed.is_none_or(|c| *w > c))
    }

    /// Where this partition's messages are read again after an aborted
    /// transaction: the offset last committed under this assignment, else
    /// the first one received (where the group's committed offset put it).
    /// `None` when nothing was received.
    pub(crate) fn rewind_to(&self) -> Option<i64> {
        self.committed.or(self.first_received)
    }

    /// Records that `offset` was committed.
    pub(crate) fn mark_committed(&mut self, offset: i64) {
        self.committed = Some(offset);
        self.stored = Some(self.stored.map_or(offset, |s| s.max(offset)));
    }
}

/// The offsets of one key's messages waiting in a partition, oldest first;
/// never empty. The oldest is kept inline, so a key with one message in
/// the partition (the common case) allocates nothing.
#[derive(Debug)]
struct KeyQueue {
    head: i64,
    rest: VecDeque<i64>,
}

impl KeyQueue {
    fn new(first: i64) -> Self {
        KeyQueue {
            head: first,
            rest: VecDeque::new(),
        }
    }

    fn front(&self) -> i64 {
        self.head
    }

    fn push_back(&mut self, offset: i64) {
        self.rest.push_back(offset);
    }

    /// Drops the oldest offset; false if none is left (the queue is then
    /// to be removed).
    fn pop_front(&mut self) -> bool {
        match self.rest.pop_front() {
            Some(next) => {
                self.head = next;
                true
            }
            None => false,
        }
    }
}

/// What a held message costs in memory, roughly: its bytes plus bookkeeping.
pub(crate) fn size_of_message(message: &Message) -> usize {
    let headers = message.headers.wire_len() + 48 * message.headers.len();
    message.payload.len()
        + message.key.as_ref().map_or(0, Bytes::len)
        + headers
        + message.meta.source.len()
        + message.meta.message_id.len()
        + 256
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn msg(offset: i64, key: Option<&str>) -> Message {
        let mut m = Message::new(format!("m{offset}"));
        m.meta.offset = Some(offset);
        m.key = key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
        m
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)
    }

    fn run(t: &mut PartitionTracker, offset: i64) -> Vec<i64> {
        assert!(t.take(offset).is_some(), "offset {offset} is ready");
        let mut released = Vec::new();
        assert!(t.complete(offset, &mut released, &mut None));
        released
    }

    #[test]
    fn watermark_runs_over_received_offsets_with_gaps() {
        let mut t = PartitionTracker::new(1, false);
        for o in [3, 5, 9] {
            assert_eq!(t.receive(msg(o, None), None, now()), Arrival::Ready);
        }
        assert_eq!(t.to_store(), None);
        run(&mut t, 5);
        assert_eq!(t.to_store(), None, "3 is not done");
        run(&mut t, 3);
        assert_eq!(t.to_store(), Some(6), "last done + 1");
        t.mark_stored(6);
        assert_eq!(t.to_store(), None);
        run(&mut t, 9);
        assert_eq!(t.to_store(), Some(10));
        assert!(t.is_idle());
    }

    #[test]
    fn watermark_never_passes_a_requeued_message() {
        let mut t = PartitionTracker::new(1, false);
        t.receive(msg(0, None), None, now());
        t.receive(msg(1, None), None, now());
        assert!(t.take(0).is_some());
        assert!(t.requeue(0));
        run(&mut t, 1);
        assert_eq!(t.to_store(), None);
        let again = t.take(0).unwrap();
        assert!(again.meta.redelivered);
        let mut r = Vec::new();
        assert!(t.complete(0, &mut r, &mut None));
        assert_eq!(t.to_store(), Some(2));
    }

    #[test]
    fn same_key_waits_for_the_earlier_message_other_keys_do_not() {
        let mut t = PartitionTracker::new(1, false);
        assert_eq!(t.receive(msg(0, Some("a")), None, now()), Arrival::Ready);
        assert_eq!(t.receive(msg(1, Some("a")), None, now()), Arrival::Held);
        assert_eq!(t.receive(msg(2, Some("b")), None, now()), Arrival::Ready);
        assert_eq!(t.receive(msg(3, None), None, now()), Arrival::Ready);
        assert!(t.take(1).is_none(), "held behind offset 0");
        assert_eq!(run(&mut t, 0), vec![1]);
        assert_eq!(run(&mut t, 1), Vec::<i64>::new());
    }

    #[test]
    fn duplicates_after_a_refetch_are_ignored() {
        let mut t = PartitionTracker::new(1, false);
        t.receive(msg(4, None), None, now());
        assert_eq!(t.receive(msg(4, None), None, now()), Arrival::Duplicate);
        assert_eq!(t.receive(msg(2, None), None, now()), Arrival::Duplicate);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn settling_twice_or_unknown_offsets_is_refused() {
        let mut t = PartitionTracker::new(1, false);
        t.receive(msg(0, None), None, now());
        let mut r = Vec::new();
        assert!(!t.complete(0, &mut r, &mut None), "not handed out yet");
        run(&mut t, 0);
        assert!(!t.complete(0, &mut r, &mut None));
        assert!(!t.requeue(0));
        assert!(!t.complete(7, &mut r, &mut None));
    }

    #[test]
    fn delayed_partitions_hold_messages_until_due() {
        let mut t = PartitionTracker::new(1, true);
        let later = now() + Duration::from_secs(5);
        assert_eq!(
            t.receive(msg(0, Some("a")), Some(later), now()),
            Arrival::Held
        );
        assert_eq!(
            t.receive(msg(1, Some("a")), Some(now()), now()),
            Arrival::Held
        );
        assert_eq!(t.receive(msg(2, None), Some(now()), now()), Arrival::Ready);
        assert_eq!(t.not_due(), 1);
        assert_eq!(t.next_due(), Some(later));
        let mut r = Vec::new();
        t.release_due(now() + Duration::from_secs(4), &mut r);
        assert!(r.is_empty());
        t.release_due(later, &mut r);
        assert_eq!(r, vec![0]);
        assert_eq!(t.not_due(), 0);
        assert_eq!(run(&mut t, 0), vec![1]);
    }

    #[test]
    fn due_times_are_ignored_on_main_topics() {
        let mut t = PartitionTracker::new(1, false);
        let later = now() + Duration::from_secs(5);
        assert_eq!(t.receive(msg(0, None), Some(later), now()), Arrival::Ready);
        assert_eq!(t.not_due(), 0);
    }

    #[test]
    fn idle_partitions_advance_past_trailing_gaps() {
        let mut t = PartitionTracker::new(1, false);
        t.advance_idle(10);
        assert_eq!(t.to_store(), None, "nothing received yet");
        t.receive(msg(0, None), None, now());
        t.advance_idle(10);
        assert_eq!(t.to_store(), None, "offset 0 still runs");
        run(&mut t, 0);
        t.advance_idle(2);
        assert_eq!(t.to_store(), Some(2));
        t.mark_committed(2);
        assert_eq!(t.to_commit(), None);
        assert_eq!(t.to_store(), None);
    }
}
