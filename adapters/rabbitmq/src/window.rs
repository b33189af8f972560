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
//! - one `basic.ack` per completed tag behind the first hole (a slow
//!   delivery does not hold the acks of the fast ones behind it), after
//!   which those entries count as settled and are never named again.
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

use backstop::AckError;
use backstop::metrics::{ACK_FAILURES, consumer_labels};
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, watch};

use crate::source::Counts;

/// `backstop_rabbitmq_ack_frames_total{source, group, multiple}`: ack
/// frames sent, `multiple="true"` for a coalesced one.
pub const ACK_FRAMES: &str = "backstop_rabbitmq_ack_frames_total";

/// `backstop_rabbitmq_acks_coalesced_total{source, group}`: deliveries
/// acked by a `multiple` frame (their number over the `multiple="true"`
/// frames is the average coalescing).
pub const ACKS_COALESCED: &str = "backstop_rabbitmq_acks_coalesced_total";

/// One entry: a delivery tag and how far it is settled.
#[derive(Debug)]
struct Entry<A> {
    tag: u64,
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
    /// Settled by a frame already sent (a nack, an individual ack).
    Settled,
}

/// The frames of one flush.
#[derive(Debug)]
pub(crate) struct Plan<A> {
    /// The flush's number: the acks marked before it was planned wait for it.
    generation: u64,
    /// `basic.ack(multiple = true)` through this tag, with its acker.
    multiple: Option<(u64, A)>,
    /// How many completed deliveries the `multiple` frame acks.
    coalesced: u64,
    /// One `basic.ack` each, behind the first hole.
    single: Vec<(u64, A)>,
}

/// The window's bookkeeping, apart from sending (pure logic).
#[derive(Debug)]
struct Ledger<A> {
    /// Tags from the lowest not passed yet, in order.
    entries: VecDeque<Entry<A>>,
    /// The tag right after the last one passed by a `multiple` frame (the
    /// first tag of a channel is 1).
    next: u64,
    /// Completed entries not yet planned.
    completed: usize,
    /// The next flush's number.
    generation: u64,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
            next: 1,
            completed: 0,
            generation: 1,
        }
    }
}

/// What [`Ledger::complete`] did with an ack.
#[derive(Debug)]
enum Marked<A> {
    /// Marked; it waits for the flush of this generation.
    Waits(u64),
    /// The window does not hold this tag: the caller sends its own frame.
    Unknown(A),
}

impl<A> Ledger<A> {
    /// Enters a delivery handed out by the channel (tags only grow).
    fn open(&mut self, tag: u64) {
        if self.entries.back().is_some_and(|last| last.tag >= tag) || tag < self.next {
            return;
        }
        self.entries.push_back(Entry {
            tag,
            mark: Mark::Open,
        });
    }

    fn find(&mut self, tag: u64) -> Option<&mut Entry<A>> {
        let at = self.entries.binary_search_by_key(&tag, |e| e.tag).ok()?;
        self.entries.get_mut(at)
    }

    /// Marks `tag` completed with the acker that can name it.
    fn complete(&mut self, tag: u64, acker: A) -> Marked<A> {
        let generation = self.generation;
        match self.find(tag) {
            Some(entry) if matches!(entry.mark, Mark::Open) => {
                entry.mark = Mark::Completed(acker);
                self.completed += 1;
                Marked::Waits(generation)
            }
            _ => Marked::Unknown(acker),
        }
    }

    /// Marks `tag` settled by a frame that was sent.
    fn settled(&mut self, tag: u64) {
        if let Some(entry) = self.find(tag)
            && matches!(entry.mark, Mark::Open)
        {
            entry.mark = Mark::Settled;
        }
    }

    /// The frames for every completed entry, or `None` when none waits.
    fn plan(&mut self) -> Option<Plan<A>> {
        if self.completed == 0 {
            return None;
        }
        self.completed = 0;
        let generation = self.generation;
        self.generation += 1;
        let mut multiple = None;
        let mut coalesced = 0;
        while let Some(front) = self.entries.front() {
            if front.tag != self.next || matches!(front.mark, Mark::Open) {
                break;
            }
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.next = entry.tag + 1;
            if let Mark::Completed(acker) = entry.mark {
                multiple = Some((entry.tag, acker));
                coalesced += 1;
            }
        }
        let mut single = Vec::new();
        for entry in &mut self.entries {
            if matches!(entry.mark, Mark::Completed(_))
                && let Mark::Completed(acker) = std::mem::replace(&mut entry.mark, Mark::Settled)
            {
                single.push((entry.tag, acker));
            }
        }
        Some(Plan {
            generation,
            multiple,
            coalesced,
            single,
        })
    }
}

/// How far the window's flushes got.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every flush up to this generation sent its frames.
    flushed: u64,
    /// The channel closed, why: no flush after `flushed` sends anything.
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
            ledger: Mutex::new(Ledger::default()),
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
        // The ledger holds no invariant a panicking holder could break
        // half-way (each method finishes its change before it returns).
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a delivery the channel handed out.
    pub(crate) fn enter(&self, tag: u64) {
        self.ledger().open(tag);
    }

    /// Records that a frame settling `tag` (a nack, an individual ack) was
    /// sent.
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
        let generation = match marked {
            Marked::Waits(generation) => generation,
            Marked::Unknown(acker) => return self.single(tag, acker).await,
        };
        self.wake.notify_one();
        let failed = match progress
            .wait_for(|p| p.flushed >= generation || p.gone.is_some())
            .await
        {
            Ok(progress) if progress.flushed >= generation => return Ok(()),
            Ok(progress) => progress.gone.clone(),
            // The window was dropped with its channel.
            Err(_) => None,
        };
        Err(self.gone(tag, failed.as_deref().unwrap_or("the channel closed")))
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

    /// Sends what completed, whenever something did.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let plan = self.ledger().plan();
                let Some(plan) = plan else { break };
                if let Err(why) = self.send(plan).await {
                    self.end(&why);
                    return;
                }
            }
        }
    }

    /// Sends one plan's frames in order; on a failure the channel is gone.
    async fn send(&self, plan: Plan<lapin::Acker>) -> Result<(), String> {
        let Plan {
            generation,
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
                self.progress.send_modify(|p| p.flushed = generation);
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

    /// A ledger with tags `1..=n` entered.
    fn ledger(n: u64) -> Ledger<u64> {
        let mut ledger = Ledger::default();
        for tag in 1..=n {
            ledger.open(tag);
        }
        ledger
    }

    fn frames(plan: &Plan<u64>) -> (Option<u64>, Vec<u64>) {
        (
            plan.multiple.as_ref().map(|(tag, _)| *tag),
            plan.single.iter().map(|(tag, _)| *tag).collect(),
        )
    }

    #[test]
    fn completions_in_order_go_out_as_one_multiple_frame() {
        let mut ledger = ledger(5);
        for tag in [3, 1, 2] {
            assert!(matches!(ledger.complete(tag, tag), Marked::Waits(1)));
        }
        let plan = ledger.plan().expect("three completed");
        assert_eq!(frames(&plan), (Some(3), vec![]));
        assert_eq!(plan.coalesced, 3);
        assert!(ledger.plan().is_none(), "nothing waits any more");
    }

    #[test]
    fn a_hole_is_never_covered_and_what_completed_behind_it_is_acked_alone() {
        let mut ledger = ledger(6);
        for tag in [1, 2, 4, 6] {
            ledger.complete(tag, tag);
        }
        let plan = ledger.plan().expect("four completed");
        assert_eq!(frames(&plan), (Some(2), vec![4, 6]));
        // 3 is nacked (its frame sent), 5 completes: the run reaches 6,
        // named already, so the multiple frame names 5, the last
        // completed tag of the run.
        ledger.settled(3);
        ledger.complete(5, 5);
        let plan = ledger.plan().expect("one completed");
        assert_eq!(frames(&plan), (Some(5), vec![]));
        assert!(ledger.entries.is_empty(), "every tag passed");
    }

    #[test]
    fn no_tag_is_named_twice_and_a_settled_tag_cannot_complete() {
        let mut ledger = ledger(3);
        ledger.complete(2, 2);
        let plan = ledger.plan().expect("one");
        assert_eq!(frames(&plan), (None, vec![2]));
        assert!(matches!(ledger.complete(2, 2), Marked::Unknown(2)));
        ledger.settled(1);
        ledger.complete(3, 3);
        let plan = ledger.plan().expect("one");
        assert_eq!(frames(&plan), (Some(3), vec![]));
    }

    #[test]
    fn a_tag_never_seen_stays_a_hole() {
        let mut ledger = Ledger::default();
        for tag in [1, 2, 4, 5] {
            ledger.open(tag);
            ledger.complete(tag, tag);
        }
        let plan = ledger.plan().expect("four");
        assert_eq!(frames(&plan), (Some(2), vec![4, 5]));
        ledger.open(6);
        ledger.complete(6, 6);
        let plan = ledger.plan().expect("one");
        assert_eq!(frames(&plan), (None, vec![6]), "3 was never seen");
    }

    #[test]
    fn flush_generations_count_up_and_late_acks_wait_for_the_next() {
        let mut ledger = ledger(2);
        assert!(matches!(ledger.complete(1, 1), Marked::Waits(1)));
        let plan = ledger.plan().expect("one");
        assert_eq!(plan.generation, 1);
        assert!(matches!(ledger.complete(2, 2), Marked::Waits(2)));
        assert_eq!(ledger.plan().expect("one").generation, 2);
    }

    #[test]
    fn an_unknown_or_stale_tag_is_left_to_the_caller() {
        let mut ledger = ledger(1);
        assert!(matches!(ledger.complete(9, 9), Marked::Unknown(9)));
        ledger.open(1); // entered twice: ignored
        assert_eq!(ledger.entries.len(), 1);
    }
}
