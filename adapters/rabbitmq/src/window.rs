//! The ack window of one channel: acks of deliveries that completed
//! together go to the broker as one `basic.ack(multiple = true)` frame.
//!
//! Every delivery the channel hands out is entered in its [`Window`] in
//! delivery-tag order and stays a **hole** until it is settled: running,
//! waiting to be nacked (the ack layer waits a jittered delay first),
//! being deferred (until its confirmed copy is written and it is acked),
//! held by a paused runner. An ack does not send a frame: it marks its
//! entry completed and waits for the channel's flusher, which wakes once
//! completions are waiting and sends, for all of them at once:
//!
//! - `basic.ack(T, multiple = true)` for the longest run of entries from
//!   the lowest unsettled tag on in which every tag is either completed or
//!   was settled by a frame sent earlier on this channel, naming the last
//!   *completed* tag `T` of that run: a frame covers no hole, and never
//!   names a tag already settled (the broker closes a channel on an
//!   unknown delivery tag);
//! - for completed tags behind the first hole: nothing while that hole is
//!   younger than [`HOLD_BEHIND_HOLE`] (they wait for it, so that one
//!   `multiple` frame covers them all once it completes); after that the
//!   hole is slow, and each gets a `basic.ack` of its own (a slow delivery
//!   does not hold the acks of the fast ones behind it), after which those
//!   entries count as settled and are never named again.
//!
//! One flush is in flight at a time: an entry it names counts as settled
//! only once its frame was sent, and an ack returns only then.
//!
//! A tag the window never saw (a delivery lapin dropped for a cancelled
//! consumer) is a hole forever: the window never acks past it with a
//! `multiple` frame. Nacks go out at once, one frame each, and the entry
//! counts as settled only after the frame was sent. A channel that
//! closes ends the window: acks waiting for a flush, and later ones, fail
//! with [`AckError::ChannelGone`] (the broker redelivers those messages).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backstop::AckError;
use backstop::metrics::{ACK_FAILURES, consumer_labels};
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::source::Counts;

/// `backstop_rabbitmq_ack_frames_total{source, group, multiple}`: ack
/// frames sent, `multiple="true"` for a coalesced one.
pub const ACK_FRAMES: &str = "backstop_rabbitmq_ack_frames_total";

/// `backstop_rabbitmq_acks_coalesced_total{source, group}`: deliveries
/// acked by a `multiple` frame (their number over the `multiple="true"`
/// frames is the average coalescing).
pub const ACKS_COALESCED: &str = "backstop_rabbitmq_acks_coalesced_total";

/// How long completed deliveries wait behind an unsettled one before they
/// are acked one frame each: a delivery still running after this is slow,
/// and the acks behind it go out without it. Until then they wait for it,
/// so that one `multiple` frame covers them all.
pub const HOLD_BEHIND_HOLE: Duration = Duration::from_millis(20);

/// One entry: a delivery tag, when it arrived, and how far it is settled.
#[derive(Debug)]
struct Entry<A> {
    tag: u64,
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
    /// Settled by a frame already sent (a nack, an individual ack).
    Settled,
}

/// The frames of one flush.
#[derive(Debug)]
pub(crate) struct Plan<A> {
    /// `basic.ack(multiple = true)` through this tag, with its acker.
    multiple: Option<(u64, A)>,
    /// How many completed deliveries the `multiple` frame acks.
    coalesced: u64,
    /// One `basic.ack` each, behind the first hole.
    single: Vec<(u64, A)>,
}

/// What the flusher does next.
#[derive(Debug)]
enum Step<A> {
    /// Send these frames, then [`Ledger::confirm`].
    Send(Plan<A>),
    /// Completions wait behind a hole younger than [`HOLD_BEHIND_HOLE`]:
    /// plan again at this instant (or on the next completion).
    HoldUntil(Instant),
    /// Nothing completed.
    Idle,
}

/// The window's bookkeeping, apart from sending (pure logic). One flush at
/// a time: [`plan`](Self::plan), send, [`confirm`](Self::confirm).
#[derive(Debug)]
struct Ledger<A> {
    /// Tags from the lowest not passed yet, in order.
    entries: VecDeque<Entry<A>>,
    /// The tag right after the last one passed (the first tag of a channel
    /// is 1).
    next: u64,
    /// Completed entries not yet planned.
    completed: usize,
    /// How long completions wait behind a hole.
    hold: Duration,
}

impl<A> Ledger<A> {
    fn new(hold: Duration) -> Self {
        Ledger {
            entries: VecDeque::new(),
            next: 1,
            completed: 0,
            hold,
        }
    }
}

/// What [`Ledger::complete`] did with an ack.
#[derive(Debug)]
enum Marked<A> {
    /// Marked; it waits for a flush.
    Waits,
    /// The window does not hold this tag: the caller sends its own frame.
    Unknown(A),
}

impl<A> Ledger<A> {
    /// Enters a delivery handed out by the channel (tags only grow).
    fn open(&mut self, tag: u64, entered: Instant) {
        if self.entries.back().is_some_and(|last| last.tag >= tag) || tag < self.next {
            return;
        }
        self.entries.push_back(Entry {
            tag,
            entered,
            mark: Mark::Open,
        });
    }

    fn find(&self, tag: u64) -> Option<&Entry<A>> {
        let at = self.entries.binary_search_by_key(&tag, |e| e.tag).ok()?;
        self.entries.get(at)
    }

    fn find_mut(&mut self, tag: u64) -> Option<&mut Entry<A>> {
        let at = self.entries.binary_search_by_key(&tag, |e| e.tag).ok()?;
        self.entries.get_mut(at)
    }

    /// Marks `tag` completed with the acker that can name it.
    fn complete(&mut self, tag: u64, acker: A) -> Marked<A> {
        match self.find_mut(tag) {
            Some(entry) if matches!(entry.mark, Mark::Open) => {
                entry.mark = Mark::Completed(acker);
                self.completed += 1;
                Marked::Waits
            }
            _ => Marked::Unknown(acker),
        }
    }

    /// Marks `tag` settled by a frame that was sent.
    fn settled(&mut self, tag: u64) {
        if let Some(entry) = self.find_mut(tag)
            && matches!(entry.mark, Mark::Open)
        {
            entry.mark = Mark::Settled;
        }
    }

    /// True once a frame covering completed `tag` was sent.
    fn acked(&self, tag: u64) -> bool {
        tag < self.next
            || self
                .find(tag)
                .is_some_and(|entry| matches!(entry.mark, Mark::Settled))
    }

    /// The next step: the frames for what completed, or how long to hold.
    fn plan(&mut self, now: Instant) -> Step<A> {
        if self.completed == 0 {
            return Step::Idle;
        }
        // The run from the lowest tag on: completed or settled, no gap.
        let mut expected = self.next;
        let mut run = 0;
        let mut last_completed = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.tag != expected || matches!(entry.mark, Mark::Open) {
                break;
            }
            if matches!(entry.mark, Mark::Completed(_)) {
                last_completed = Some(i);
            }
            expected = entry.tag + 1;
            run = i + 1;
        }
        let mut multiple = None;
        let mut coalesced = 0;
        if let Some(last) = last_completed {
            for (i, entry) in self.entries.iter_mut().enumerate().take(last + 1) {
                if let Mark::Completed(acker) = std::mem::replace(&mut entry.mark, Mark::Planned) {
                    coalesced += 1;
                    if i == last {
                        multiple = Some((entry.tag, acker));
                    }
                } else {
                    entry.mark = Mark::Settled;
                }
            }
        }
        // Behind the first hole: acked one by one once the hole is slow (a
        // tag never seen is a hole of unknown age: slow).
        let hole = self.entries.get(run);
        let gap = hole.is_some_and(|h| h.tag != expected);
        let due = hole.map(|h| h.entered + self.hold);
        let mut single = Vec::new();
        let mut held = false;
        if hole.is_some() {
            let slow = gap || due.is_some_and(|due| due <= now);
            for entry in self.entries.iter_mut().skip(run) {
                if !matches!(entry.mark, Mark::Completed(_)) {
                    continue;
                }
                if !slow {
                    held = true;
                    continue;
                }
                if let Mark::Completed(acker) = std::mem::replace(&mut entry.mark, Mark::Planned) {
                    single.push((entry.tag, acker));
                }
            }
        }
        self.completed -= usize::try_from(coalesced).unwrap_or(usize::MAX) + single.len();
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

    /// The planned frames were sent: their entries are settled, and the
    /// run of settled tags from the lowest on is passed.
    fn confirm(&mut self) {
        for entry in &mut self.entries {
            if matches!(entry.mark, Mark::Planned) {
                entry.mark = Mark::Settled;
            }
        }
        while let Some(front) = self.entries.front() {
            if front.tag != self.next || !matches!(front.mark, Mark::Settled) {
                break;
            }
            self.next = front.tag + 1;
            self.entries.pop_front();
        }
    }
}

/// How far the window's flushes got.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Flushes sent so far.
    flushes: u64,
    /// The channel closed, why: nothing is sent any more.
    gone: Option<Arc<str>>,
}

/// The ack window of one channel; see the [module docs](self).
pub(crate) struct Window {
    ledger: Mutex<Ledger<lapin::Acker>>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    counts: Arc<Counts>,
    queue: Arc<str>,
    multiple_frames: metrics::Counter,
    single_frames: metrics::Counter,
    coalesced: metrics::Counter,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// The window of a new channel consuming `queue`, and its flusher,
    /// spawned on the current runtime (abort it when the channel goes).
    pub(crate) fn open(
        queue: Arc<str>,
        counts: Arc<Counts>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let labels =
            |multiple: &'static str| consumer_labels(&queue, &queue, &[("multiple", multiple)]);
        let window = Arc::new(Window {
            ledger: Mutex::new(Ledger::new(HOLD_BEHIND_HOLE)),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
            counts,
            multiple_frames: metrics::counter!(ACK_FRAMES, labels("true")),
            single_frames: metrics::counter!(ACK_FRAMES, labels("false")),
            coalesced: metrics::counter!(ACKS_COALESCED, consumer_labels(&queue, &queue, &[])),
            queue,
        });
        let flusher = tokio::spawn(Arc::clone(&window).flush_loop());
        (window, flusher)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger<lapin::Acker>> {
        // Each ledger method finishes its change before it returns: a
        // panicking holder leaves nothing half-done.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a delivery the channel handed out, which arrived at `entered`.
    pub(crate) fn enter(&self, tag: u64, entered: Instant) {
        self.ledger().open(tag, entered);
    }

    /// Records that a frame settling `tag` (a nack) was sent.
    pub(crate) fn settled(&self, tag: u64) {
        self.ledger().settled(tag);
        self.counts.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// Acks `tag`: waits until a flush sent a frame covering it.
    pub(crate) async fn ack(&self, tag: u64, acker: lapin::Acker) -> Result<(), AckError> {
        let mut progress = self.progress.subscribe();
        if let Some(why) = progress.borrow().gone.clone() {
            return Err(self.gone(tag, &why));
        }
        let marked = self.ledger().complete(tag, acker);
        if let Marked::Unknown(acker) = marked {
            return self.single(tag, acker).await;
        }
        self.wake.notify_one();
        loop {
            let changed = progress.changed().await;
            if self.ledger().acked(tag) {
                return Ok(());
            }
            let gone = match changed {
                Ok(()) => progress.borrow_and_update().gone.clone(),
                // The window was dropped with its channel.
                Err(_) => Some(Arc::from("the channel closed")),
            };
            if let Some(why) = gone {
                return Err(self.gone(tag, &why));
            }
        }
    }

    /// Ends the window: its channel closed. Waiting and later acks fail.
    pub(crate) fn end(&self, why: &str) {
        self.progress.send_if_modified(|p| {
            let first = p.gone.is_none();
            if first {
                p.gone = Some(Arc::from(why));
            }
            first
        });
    }

    fn gone(&self, tag: u64, why: &str) -> AckError {
        AckError::ChannelGone(format!(
            "ack of delivery {tag} from queue {:?} did not reach the broker ({why})",
            self.queue
        ))
    }

    /// One `basic.ack` for a tag the window does not hold.
    async fn single(&self, tag: u64, acker: lapin::Acker) -> Result<(), AckError> {
        match acker.ack(BasicAckOptions { multiple: false }).await {
            Ok(true) => {
                self.single_frames.increment(1);
                self.counts.settled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Err(self.gone(tag, "the channel that delivered it is closed")),
            Err(error) => Err(self.gone(tag, &error.to_string())),
        }
    }

    /// Sends what completed, whenever something did; one flush at a time.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            let step = self.ledger().plan(Instant::now());
            match step {
                Step::Idle => self.wake.notified().await,
                Step::HoldUntil(due) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                Step::Send(plan) => match self.send(plan).await {
                    Ok(()) => {
                        self.ledger().confirm();
                        self.progress.send_modify(|p| p.flushes += 1);
                    }
                    Err(why) => {
                        self.end(&why);
                        return;
                    }
                },
            }
        }
    }

    /// Sends one plan's frames in order; on a failure the channel is gone.
    async fn send(&self, plan: Plan<lapin::Acker>) -> Result<(), String> {
        let Plan {
            multiple,
            coalesced,
            single,
        } = plan;
        let acks = coalesced + single.len() as u64;
        let frames = multiple
            .map(|(tag, acker)| (tag, acker, true))
            .into_iter()
            .chain(single.into_iter().map(|(tag, acker)| (tag, acker, false)));
        let mut result = Ok(());
        for (tag, acker, multiple) in frames {
            result = match acker.ack(BasicAckOptions { multiple }).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "the channel closed before the ack of delivery {tag} was sent"
                )),
                Err(error) => Err(format!("the ack of delivery {tag} failed: {error}")),
            };
            if result.is_err() {
                break;
            }
        }
        self.counts.settled.fetch_add(acks, Ordering::Relaxed);
        match result {
            Ok(()) => {
                if coalesced > 0 {
                    self.multiple_frames.increment(1);
                    self.coalesced.increment(coalesced);
                }
                self.single_frames.increment(acks - coalesced);
                Ok(())
            }
            Err(why) => {
                metrics::counter!(ACK_FAILURES, consumer_labels(&self.queue, &self.queue, &[]))
                    .increment(acks);
                tracing::debug!(queue = %self.queue, %why, "an ack flush failed; the broker redelivers its deliveries");
                Err(why)
            }
        }
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
        ledger.confirm();
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
        ledger.confirm();
        assert!([1, 2, 4, 6].iter().all(|&tag| ledger.acked(tag)));
        // 3 is nacked (its frame sent), 5 completes: the run reaches 6,
        // named already, so the multiple frame names 5, the last
        // completed tag of the run.
        ledger.settled(3);
        ledger.complete(5, 5);
        assert_eq!(frames(&mut ledger, later), (Some(5), vec![]));
        ledger.confirm();
        assert!(ledger.entries.is_empty(), "every tag passed");
        assert_eq!(ledger.next, 7);
    }

    #[test]
    fn no_tag_is_named_twice_and_a_settled_tag_cannot_complete() {
        let now = Instant::now();
        let mut ledger = ledger(3, now);
        ledger.complete(2, 2);
        assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
        ledger.confirm();
        assert!(matches!(ledger.complete(2, 2), Marked::Unknown(2)));
        ledger.settled(1);
        ledger.complete(3, 3);
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
    }

    #[test]
    fn a_nack_during_a_flush_is_not_passed_before_it_was_sent() {
        let now = Instant::now();
        let mut ledger = ledger(3, now);
        ledger.complete(2, 2);
        // 1 is a hole while the flush plans; its nack goes out meanwhile.
        assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
        ledger.settled(1);
        ledger.confirm();
        ledger.complete(3, 3);
        assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
    }

    #[test]
    fn a_tag_never_seen_stays_a_hole() {
        let now = Instant::now();
        let mut ledger = Ledger::new(HOLD);
        for tag in [1, 2, 4, 5] {
            ledger.open(tag, now);
            ledger.complete(tag, tag);
        }
        assert_eq!(frames(&mut ledger, now), (Some(2), vec![4, 5]));
        ledger.confirm();
        ledger.open(6, now);
        ledger.complete(6, 6);
        assert_eq!(
            frames(&mut ledger, now),
            (None, vec![6]),
            "3 was never seen"
        );
        ledger.confirm();
        assert!(!ledger.acked(3));
    }

    #[test]
    fn an_unknown_or_stale_tag_is_left_to_the_caller() {
        let now = Instant::now();
        let mut ledger = ledger(1, now);
        assert!(matches!(ledger.complete(9, 9), Marked::Unknown(9)));
        ledger.open(1, now); // entered twice: ignored
        assert_eq!(ledger.entries.len(), 1);
    }
}
