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
mod tests;
