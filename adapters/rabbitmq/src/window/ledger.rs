//! The ack window's bookkeeping, apart from sending: which tags are open,
//! completed, in the flush being sent, or settled, and what the next flush
//! sends. Pure logic, one flush at a time: [`Ledger::plan`], send,
//! [`Ledger::confirm`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// One entry: a delivery tag (or, settled, a run of tags), when it
/// arrived, and how far it is settled.
#[derive(Debug)]
struct Entry<A> {
    tag: u64,
    /// The last tag of the entry: `tag` itself unless the entry is a
    /// [`Mark::Settled`] run `tag ..= last`.
    last: u64,
    entered: Instant,
    mark: Mark<A>,
}

/// Where a delivery stands.
#[derive(Debug)]
enum Mark<A> {
    /// Not settled: a hole.
    Open,
    /// Completed successfully; its ack waits for a flush. Holds the
    /// delivery's acker, which sends the frame that names it.
    Completed(A),
    /// In the flush being sent.
    Planned,
    /// Settled by a frame already sent (a nack, an earlier ack).
    Settled,
}

/// The frames of one flush.
#[derive(Debug)]
pub(super) struct Plan<A> {
    /// `basic.ack(multiple = true)` through this tag, with its acker.
    pub(super) multiple: Option<(u64, A)>,
    /// How many completed deliveries the `multiple` frame acks.
    pub(super) coalesced: u64,
    /// One `basic.ack` each, behind the first hole.
    pub(super) single: Vec<(u64, A)>,
}

/// What the flusher does next.
#[derive(Debug)]
pub(super) enum Step<A> {
    /// Send these frames, then [`Ledger::confirm`].
    Send(Plan<A>),
    /// Completions wait behind a hole younger than the hold: plan again at
    /// this instant (or on the next completion).
    HoldUntil(Instant),
    /// Nothing completed.
    Idle,
}

/// What [`Ledger::complete`] did with an ack.
#[derive(Debug)]
pub(super) enum Marked<A> {
    /// Marked; it waits for a flush.
    Waits,
    /// The window never held this tag: the caller sends its own frame.
    Unknown(A),
    /// The tag is settled already or being acked: naming it again would
    /// close the channel.
    Settled,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Ledger<A> {
    /// Entries from the lowest tag not passed yet, in tag order; settled
    /// neighbours are merged into runs, so the ledger holds about two
    /// entries per unsettled delivery however long a hole lasts.
    entries: VecDeque<Entry<A>>,
    /// Every tag below it is settled and passed (a channel's first tag is 1).
    next: u64,
    /// Completed entries not yet planned.
    completed: usize,
    /// How long completions wait behind a hole before they go one by one.
    hold: Duration,
    /// A tag the window never saw (a delivery lapin dropped for a cancelled
    /// consumer) lies below `next`: no `multiple` frame may ever be sent on
    /// this channel again.
    unseen: bool,
    /// The tag the flush being sent acks with `multiple`.
    planned_multiple: Option<u64>,
}

impl<A> Ledger<A> {
    /// An empty ledger for a new channel.
    pub(super) fn new(hold: Duration) -> Self {
        Ledger {
            entries: VecDeque::new(),
            next: 1,
            completed: 0,
            hold,
            unseen: false,
            planned_multiple: None,
        }
    }

    /// Enters a delivery handed out by the channel (tags only grow).
    pub(super) fn open(&mut self, tag: u64, entered: Instant) {
        if tag < self.next || self.entries.back().is_some_and(|last| last.last >= tag) {
            return;
        }
        self.entries.push_back(Entry {
            tag,
            last: tag,
            entered,
            mark: Mark::Open,
        });
    }

    /// The index of the entry holding `tag`.
    fn locate(&self, tag: u64) -> Option<usize> {
        let at = self.entries.partition_point(|e| e.last < tag);
        self.entries.get(at).filter(|e| e.tag <= tag).map(|_| at)
    }

    /// Marks `tag` completed with the acker that can name it.
    pub(super) fn complete(&mut self, tag: u64, acker: A) -> Marked<A> {
        if tag < self.next {
            return Marked::Settled;
        }
        let Some(at) = self.locate(tag) else {
            return Marked::Unknown(acker);
        };
        let entry = &mut self.entries[at];
        if !matches!(entry.mark, Mark::Open) {
            return Marked::Settled;
        }
        entry.mark = Mark::Completed(acker);
        self.completed += 1;
        Marked::Waits
    }

    /// Marks `tag` settled by a frame that was sent (a nack).
    pub(super) fn settled(&mut self, tag: u64) {
        if let Some(at) = self.locate(tag)
            && matches!(self.entries[at].mark, Mark::Open)
        {
            self.entries[at].mark = Mark::Settled;
        }
    }

    /// True once a frame covering `tag` was sent.
    pub(super) fn acked(&self, tag: u64) -> bool {
        tag < self.next
            || self
                .locate(tag)
                .is_some_and(|at| matches!(self.entries[at].mark, Mark::Settled))
    }

    /// The next step: the frames for what completed, or how long to hold.
    pub(super) fn plan(&mut self, now: Instant) -> Step<A> {
        if self.completed == 0 {
            return Step::Idle;
        }
        // The run from the lowest tag on: completed or settled, no gap.
        let mut expected = self.next;
        let mut run = 0;
        let mut last_completed = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if self.unseen || entry.tag != expected || matches!(entry.mark, Mark::Open) {
                break;
            }
            if matches!(entry.mark, Mark::Completed(_)) {
                last_completed = Some(i);
            }
            expected = entry.last + 1;
            run = i + 1;
        }
        let mut multiple = None;
        let mut coalesced = 0;
        if let Some(last) = last_completed {
            for (i, entry) in self.entries.iter_mut().enumerate().take(last + 1) {
                if matches!(entry.mark, Mark::Completed(_))
                    && let Mark::Completed(acker) =
                        std::mem::replace(&mut entry.mark, Mark::Planned)
                {
                    coalesced += 1;
                    if i == last {
                        multiple = Some((entry.tag, acker));
                    }
                }
            }
        }
        self.planned_multiple = multiple.as_ref().map(|(tag, _)| *tag);
        // Behind the first hole: acked one by one once the hole is slow (a
        // tag never seen is a hole of unknown age: slow).
        let hole = self.entries.get(run);
        let gap = self.unseen || hole.is_some_and(|h| h.tag != expected);
        let due = hole.map(|h| h.entered + self.hold);
        let slow = gap || due.is_some_and(|due| due <= now);
        let mut single = Vec::new();
        let mut held = false;
        for entry in self.entries.iter_mut().skip(run) {
            if !matches!(entry.mark, Mark::Completed(_)) {
                continue;
            }
            if !slow {
                held = true;
            } else if let Mark::Completed(acker) = std::mem::replace(&mut entry.mark, Mark::Planned)
            {
                single.push((entry.tag, acker));
            }
        }
        self.completed -= coalesced as usize + single.len();
        if multiple.is_none() && single.is_empty() {
            return match (held, due) {
                (true, Some(due)) => Step::HoldUntil(due),
                _ => Step::Idle,
            };
        }
        Step::Send(Plan {
            multiple,
            coalesced,
            single,
        })
    }

    /// The flush was sent: its `multiple` frame if `multiple_sent`, and
    /// every single frame but those in `failed`. What was sent is settled;
    /// what was not stays planned (the channel is gone: the broker
    /// redelivers it). Then the settled run from the lowest tag on is
    /// passed, and settled neighbours merge.
    pub(super) fn confirm(&mut self, multiple_sent: bool, failed: &[u64]) {
        let through = self.planned_multiple.take();
        for entry in &mut self.entries {
            if !matches!(entry.mark, Mark::Planned) {
                continue;
            }
            let sent = match through {
                Some(t) if entry.tag <= t => multiple_sent,
                _ => !failed.contains(&entry.tag),
            };
            if sent {
                entry.mark = Mark::Settled;
            }
        }
        while let Some(front) = self.entries.front() {
            if !matches!(front.mark, Mark::Settled) {
                break;
            }
            if front.tag != self.next {
                // A tag below it was never seen: never cover it.
                self.unseen = true;
            }
            self.next = front.last + 1;
            self.entries.pop_front();
        }
        self.merge_settled();
    }

    /// Merges neighbouring settled entries into runs.
    fn merge_settled(&mut self) {
        let mut merged: VecDeque<Entry<A>> = VecDeque::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            if let Some(prev) = merged.back_mut()
                && matches!(prev.mark, Mark::Settled)
                && matches!(entry.mark, Mark::Settled)
                && prev.last + 1 == entry.tag
            {
                prev.last = entry.last;
                continue;
            }
            merged.push_back(entry);
        }
        self.entries = merged;
    }

    /// Entries held (for tests and the bound on memory).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(20);

    /// A ledger with tags `1..=n` entered at `at`.
    fn ledger(n: u64, at: Instant) -> Ledger<u64> {
        let mut ledger = Ledger::new(HOLD);
        for tag in 1..=n {
            ledger.open(tag, at);
        }
        ledger
    }

    /// The frames of the next step (it must send).
    fn frames(ledger: &mut Ledger<u64>, now: Instant) -> (Option<u64>, Vec<u64>) {
        match ledger.plan(now) {
            Step::Send(plan) => (
                plan.multiple.map(|(tag, _)| tag),
                plan.single.into_iter().map(|(tag, _)| tag).collect(),
            ),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[test]
    fn completions_in_order_go_out_as_one_multiple_frame() {
        let now = Instant::now();
        let mut ledger = ledger(5, now);
        for tag in [3, 1, 2] {
            assert!(matches!(ledger.complete(tag, tag), Marked::Waits));
        }
        assert_eq!(frames(&mut ledger, now), (Some(3), vec![]));
        assert!(!ledger.acked(1), "not before the frame was sent");
        ledger.confirm(true, &[]);
        assert!((1..=3).all(|tag| ledger.acked(tag)));
        assert!(!ledger.acked(4));
        assert!(matches!(ledger.plan(now), Step::Idle));
    }

    #[test]
    fn completions_behind_a_young_hole_wait_for_it_then_share_its_frame() {
        let now = Instant::now();
        let mut ledger = ledger(4, now);
        for tag in [2, 3] {
            ledger.complete(tag, tag);
        }
        match ledger.plan(now) {
            Step::HoldUntil(due) => assert_eq!(due, now + HOLD),
            other => panic!("expected a hold, got {other:?}"),
        }
        ledger.complete(1, 1);
        assert_eq!(frames(&mut ledger, now), (Some(3), vec![]));
    }

    #[test]
    fn a_slow_hole_is_never_covered_and_what_completed_behind_it_is_acked_alone() {
        let now = Instant::now();
        let mut ledger = ledger(6, now);
        for tag in [1, 2, 4, 6] {
            ledger.complete(tag, tag);
        }
        let later = now + HOLD;
        assert_eq!(frames(&mut ledger, later), (Some(2), vec![4, 6]));
        ledger.confirm(true, &[]);
        assert!([1, 2, 4, 6].iter().all(|&tag| ledger.acked(tag)));
        // 3 is nacked (its frame sent), 5 completes: the run reaches 6,
        // named already, so the multiple frame names 5, the last
        // completed tag of the run.
        ledger.settled(3);
        ledger.complete(5, 5);
        assert_eq!(frames(&mut ledger, later), (Some(5), vec![]));
        ledger.confirm(true, &[]);
        assert_eq!(ledger.len(), 0, "every tag passed");
        assert_eq!(ledger.next, 7);
    }

    #[test]
    fn no_tag_is_named_twice_and_a_settled_tag_cannot_complete() {
        let now = Instant::now();
        let mut ledger = ledger(3, now);
        ledger.complete(2, 2);
        assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
        assert!(matches!(ledger.complete(2, 2), Marked::Settled), "planned");
        ledger.confirm(true, &[]);
        assert!(matches!(ledger.complete(2, 2), Marked::Settled), "sent");
        ledger.settled(1);
        ledger.complete(3, 3);
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
        ledger.confirm(true, &[]);
        assert!(matches!(ledger.complete(1, 1), Marked::Settled), "passed");
    }

    #[test]
    fn a_nack_during_a_flush_is_not_passed_before_it_was_sent() {
        let now = Instant::now();
        let mut ledger = ledger(3, now);
        ledger.complete(2, 2);
        // 1 is a hole while the flush plans; its nack goes out meanwhile.
        assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
        ledger.settled(1);
        ledger.confirm(true, &[]);
        ledger.complete(3, 3);
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
    }

    #[test]
    fn a_tag_never_seen_ends_multiple_frames_for_the_channel() {
        let now = Instant::now();
        let mut ledger = Ledger::new(HOLD);
        for tag in [1, 2, 4, 5] {
            ledger.open(tag, now);
            ledger.complete(tag, tag);
        }
        assert_eq!(frames(&mut ledger, now), (Some(2), vec![4, 5]));
        ledger.confirm(true, &[]);
        assert!(ledger.unseen, "3 was skipped");
        assert_eq!(ledger.len(), 0, "the settled run behind the gap is passed");
        for tag in [6, 7] {
            ledger.open(tag, now);
            ledger.complete(tag, tag);
        }
        assert_eq!(
            frames(&mut ledger, now),
            (None, vec![6, 7]),
            "never multiple again"
        );
    }

    #[test]
    fn a_failed_frame_leaves_its_tags_unacked() {
        let now = Instant::now();
        let mut ledger = ledger(4, now);
        for tag in [1, 2, 4] {
            ledger.complete(tag, tag);
        }
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(2), vec![4]));
        ledger.confirm(true, &[4]);
        assert!(ledger.acked(1) && ledger.acked(2));
        assert!(!ledger.acked(4), "its frame failed");
        let mut ledger = self::ledger(2, now);
        ledger.complete(1, 1);
        ledger.complete(2, 2);
        assert_eq!(frames(&mut ledger, now), (Some(2), vec![]));
        ledger.confirm(false, &[]);
        assert!(
            !ledger.acked(1) && !ledger.acked(2),
            "the multiple frame failed"
        );
    }

    #[test]
    fn a_long_hole_keeps_the_ledger_small() {
        let now = Instant::now();
        let mut ledger = Ledger::new(HOLD);
        ledger.open(1, now);
        // 100,000 deliveries pass behind the hole, 64 at a time.
        let mut tag = 2;
        while tag < 100_002 {
            for t in tag..tag + 64 {
                ledger.open(t, now);
                ledger.complete(t, t);
            }
            let (multiple, single) = frames(&mut ledger, now + HOLD);
            assert_eq!((multiple, single.len()), (None, 64));
            ledger.confirm(true, &[]);
            tag += 64;
        }
        assert!(
            ledger.len() <= 2,
            "the hole and one settled run: {}",
            ledger.len()
        );
        assert!(ledger.acked(50_000) && !ledger.acked(1));
        ledger.complete(1, 1);
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(1), vec![]));
        ledger.confirm(true, &[]);
        assert_eq!((ledger.len(), ledger.next), (0, tag));
    }

    #[test]
    fn an_unknown_tag_is_left_to_the_caller_and_a_repeat_is_ignored() {
        let now = Instant::now();
        let mut ledger = ledger(1, now);
        assert!(matches!(ledger.complete(9, 9), Marked::Unknown(9)));
        ledger.open(1, now);
        assert_eq!(ledger.len(), 1);
    }
}
