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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backstop::error::AckError;
use backstop::metrics::{ACK_FAILURES, consumer_labels};
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::source::Counts;

mod ledger;

use ledger::{Ledger, Marked, Plan, Step};

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
    failures: metrics::Counter,
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
        metrics::describe_counter!(
            ACK_FRAMES,
            "Ack frames a RabbitMQ consumer sent; multiple=\"true\" for a coalesced one"
        );
        metrics::describe_counter!(
            ACKS_COALESCED,
            "Deliveries acked by a RabbitMQ consumer's multiple ack frames"
        );
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
            failures: metrics::counter!(ACK_FAILURES, consumer_labels(&queue, &queue, &[])),
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

    /// Acks `tag`: waits until a flush sent a frame covering it. A
    /// failure counts in `backstop_ack_failures_total`.
    pub(crate) async fn ack(&self, tag: u64, acker: lapin::Acker) -> Result<(), AckError> {
        let result = self.acked(tag, acker).await;
        if result.is_err() {
            self.failures.increment(1);
        }
        result
    }

    async fn acked(&self, tag: u64, acker: lapin::Acker) -> Result<(), AckError> {
        let mut progress = self.progress.subscribe();
        if let Some(why) = progress.borrow().gone.clone() {
            return Err(self.gone(tag, &why));
        }
        let marked = self.ledger().complete(tag, acker);
        match marked {
            Marked::Waits => {}
            Marked::Unknown(acker) => return self.single(tag, acker).await,
            Marked::Settled => {
                return Err(AckError::Stale(format!(
                    "delivery {tag} from queue {:?} is settled already; not acked twice",
                    self.queue
                )));
            }
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
        // However the loop ends (aborted with its channel, a panic), the
        // acks waiting for it fail instead of waiting forever.
        let _end = EndOnDrop(Arc::clone(&self));
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
                Step::Send(plan) => {
                    let sent = self.send(plan).await;
                    self.ledger().confirm(sent.multiple, &sent.failed);
                    self.progress.send_modify(|p| p.flushes += 1);
                    if let Some(why) = sent.error {
                        tracing::debug!(queue = %self.queue, %why, "an ack flush failed; the broker redelivers what it did not ack");
                        self.end(&why);
                        return;
                    }
                }
            }
        }
    }

    /// Sends one plan's frames. Their tags do not overlap, and every frame
    /// they rely on was sent by an earlier flush, so they go out together.
    async fn send(&self, plan: Plan<lapin::Acker>) -> Sent {
        let Plan {
            multiple,
            coalesced,
            single,
        } = plan;
        let frame = |tag: u64, acker: lapin::Acker, multiple: bool| async move {
            match acker.ack(BasicAckOptions { multiple }).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "the channel closed before the ack of delivery {tag} was sent"
                )),
                Err(error) => Err(format!("the ack of delivery {tag} failed: {error}")),
            }
        };
        let singles = futures::future::join_all(
            single
                .into_iter()
                .map(|(tag, acker)| async move { (tag, frame(tag, acker, false).await) }),
        );
        let multiple = async {
            match multiple {
                Some((tag, acker)) => Some(frame(tag, acker, true).await),
                None => None,
            }
        };
        let (multiple, singles) = tokio::join!(multiple, singles);
        let mut sent = Sent {
            multiple: matches!(multiple, Some(Ok(()))),
            failed: Vec::new(),
            error: None,
        };
        let mut settled = 0;
        match multiple {
            Some(Ok(())) => {
                settled += coalesced;
                self.multiple_frames.increment(1);
                self.coalesced.increment(coalesced);
            }
            Some(Err(why)) => sent.error = Some(why),
            None => {}
        }
        for (tag, result) in singles {
            match result {
                Ok(()) => {
                    settled += 1;
                    self.single_frames.increment(1);
                }
                Err(why) => {
                    sent.failed.push(tag);
                    sent.error.get_or_insert(why);
                }
            }
        }
        self.counts.settled.fetch_add(settled, Ordering::Relaxed);
        sent
    }
}

/// What a flush sent.
struct Sent {
    /// Its `multiple` frame was sent.
    multiple: bool,
    /// Its single frames that failed.
    failed: Vec<u64>,
    /// The first failure: the channel is gone.
    error: Option<String>,
}

/// Ends its window when dropped.
struct EndOnDrop(Arc<Window>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end("the channel's ack flusher stopped");
    }
}
