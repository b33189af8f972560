//! A RabbitMQ DLQ queue.
//!
//! RabbitMQ cannot browse a queue, so every action walks the queue once by
//! **rotation**: it reads each letter, decides, and settles it. A letter
//! that stays (not selected, refused by the loop guard, or just listed) is
//! republished unchanged (same body and properties) to the tail of the same
//! queue with a publisher confirm, and only then acked. A replayed letter is
//! acked after its redrive copy is confirmed; a purged one is acked. The
//! walk stops after as many letters as the queue held at its start.
//!
//! One consumer reads the walk with a prefetch of min([`WINDOW`], count) (1
//! with a `--rate`), and the acks that would let the broker send past the
//! walk's letters are held until the last letter has arrived and the
//! consumer is cancelled (see [`Walk::next`] and [`Walk::ack`]), so the walk
//! never receives a copy it rotated and nothing is in flight at the cancel.
//! A returned (requeued) letter has no place in the queue one can rely on
//! (on a 3.10 quorum queue it can come back behind the copies already
//! rotated), so a walk returns letters only on its error paths.
//!
//! Publishes are pipelined: at most [`WINDOW`] letters (and about
//! [`WINDOW_BYTES`] of payload) are unacked at once, each until its own copy
//! is confirmed, which must happen within the hold budget (`--hold-budget`,
//! default 25 min: RabbitMQ's default `consumer_timeout` of 30 min minus a
//! margin; a held ack counts from when its letter was read); past it the
//! letter is requeued and the command stops with an error. With a `--rate`,
//! one letter at a time. Memory: the window, plus the ids handled in this
//! walk in a [`Scratch`] on disk, so it does not grow with the queue. The
//! queue keeps its order; a crash between a rotation publish and its ack
//! leaves extra copies of the letters in the window (same message id),
//! which every command treats as one letter with a copy count. Nothing is
//! requeued by a normal walk, so repeated walks never raise a quorum queue's
//! delivery count. Two walks of one queue at once can each see some letters
//! twice and miss others (nothing is lost): run one command per DLQ at a
//! time. A walk the broker sends nothing for 30 s while the queue holds
//! letters (another consumer is its single active or a higher-priority
//! consumer) stops with an error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use backstop::{Message, Publisher};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use backstop_rabbitmq::lapin::types::{FieldTable, ShortString};
use backstop_rabbitmq::lapin::{BasicProperties, Channel, Confirmation, Consumer};
use backstop_rabbitmq::{RabbitMq, TopologyError, convert::message_from_delivery};
use futures::StreamExt as _;

use crate::dlq::scratch::{Mark, Scratch};
use crate::dlq::{
    Filter, Letter, Pacer, ReplayOptions, Report, Step, Watch, progress, redrive_copy,
};
use crate::error::CliError;

/// The default hold budget: RabbitMQ's default `consumer_timeout` (30 min)
/// minus a 5 min margin.
pub const DEFAULT_HOLD_BUDGET: Duration = Duration::from_secs(25 * 60);

/// A DLQ queue on a RabbitMQ broker.
#[derive(Debug)]
pub struct RabbitDlq {
    rabbit: RabbitMq,
    queue: String,
    budget: Duration,
}

/// The message of a letter read from `queue` (the adapter's conversion:
/// no panic on any property, an out-of-range timestamp is none).
pub fn message_from_letter(queue: &str, properties: &BasicProperties, data: Vec<u8>) -> Message {
    message_from_delivery(queue, None, false, properties, data)
}

/// At most this many letters are unacked (and in memory) at once.
pub const WINDOW: usize = 32;

/// At most this many payload bytes are unacked (and in memory) at once,
/// beyond the first letter.
pub const WINDOW_BYTES: usize = 2 << 20;

/// The tag of a walk's consumer on its own channel.
const CONSUMER_TAG: &str = "backstop-dlq-walk";

/// A letter read and not yet settled.
struct Held {
    tag: u64,
    since: Instant,
    properties: BasicProperties,
    letter: Letter,
}

/// Why a publish for a held letter did not go through.
enum Failed {
    /// Not confirmed within what was left of the letter's hold budget.
    OverBudget,
    /// Refused, unroutable, or the connection failed.
    Error(CliError),
}

/// A held letter whose copy (rotated or redriven) is on its way; the letter
/// is acked once the copy is confirmed.
struct Pending {
    held: Held,
    publish: tokio::task::JoinHandle<Result<(), Failed>>,
}

/// One rotation walk over the queue (see the module docs).
struct Walk {
    channel: Channel,
    rotate: Channel,
    queue: String,
    /// How many letters the queue held at the start: the walk reads no more.
    count: u32,
    remaining: u32,
    budget: Duration,
    /// Held letters in read order, each waiting for its copy's confirm.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// How many letters may be pending at once.
    window: usize,
    /// The consumer's prefetch: min(window, count).
    prefetch: u32,
    /// Letters acked so far.
    acked: u32,
    /// Settled letters (tag, read at) whose acks wait for the end of the
    /// read (see [`Walk::ack`]); they count toward the hold budget.
    deferred: Vec<(u64, Instant)>,
    /// The consumer that reads the walk (none for an empty queue).
    consumer: Option<Consumer>,
}

/// How long the walk waits for a delivery before it checks whether the
/// queue was emptied by someone else.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// How long the walk waits for a delivery while the queue holds letters
/// before it gives up (another consumer is the queue's single active or
/// higher-priority consumer).
const IDLE_LIMIT: Duration = Duration::from_secs(30);

impl Walk {
    /// The next letter of the walk, or none after as many as the queue held
    /// at the start.
    ///
    /// One consumer reads the whole walk with a prefetch of
    /// min(window, count). The broker sends it at most `acked + prefetch`
    /// letters, and [`Walk::ack`] holds back the acks that would let that
    /// pass `count`, so the consumer never receives a letter beyond the
    /// walk (a copy rotated to the tail in this walk) and nothing is in
    /// flight when it is cancelled, right after the last letter arrives
    /// and before any held ack goes out. (Cancelling earlier is not
    /// safe: on a quorum queue a delivery sent just before the queue
    /// handles `basic.cancel` can arrive after cancel-ok, and lapin drops
    /// it; a letter returned by closing the channel comes back behind the
    /// copies already rotated, so a walk would read its own copies.)
    async fn next(&mut self, dlq: &RabbitDlq) -> Result<Option<Held>, CliError> {
        if self.remaining == 0 {
            return self.end_read().await.map(|()| None);
        }
        let Some(consumer) = self.consumer.as_mut() else {
            return Ok(None);
        };
        let what = || format!("reading queue {:?}", self.queue);
        let quiet_since = Instant::now();
        loop {
            match tokio::time::timeout(IDLE_CHECK, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    self.remaining -= 1;
                    let held = self.hold(d.delivery_tag, d.properties, d.data);
                    if self.remaining == 0 {
                        // The broker has sent exactly the walk's letters (no
                        // ack that would let it send more went out): cancel
                        // now, before a settled letter's ack frees a slot.
                        self.end_read().await?;
                    }
                    return Ok(Some(held));
                }
                Ok(Some(Err(e))) => return Err(CliError::broker(what())(e)),
                Ok(None) => {
                    return Err(CliError::Broker {
                        what: what(),
                        reason: "the broker cancelled the walk's consumer or closed its channel (was the queue deleted?)".into(),
                    });
                }
                // Quiet: the queue may have been emptied by someone else.
                Err(_) => {
                    if dlq.count().await? == 0 {
                        self.remaining = 0;
                        return self.end_read().await.map(|()| None);
                    }
                    if quiet_since.elapsed() >= IDLE_LIMIT {
                        return Err(CliError::Broker {
                            what: what(),
                            reason: format!(
                                "the queue holds letters but the broker sent the walk none for {IDLE_LIMIT:?}: is another consumer its single active or a higher-priority consumer? Stop it and rerun"
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Cancels the consumer (once the walk has read its letters, or on an
    /// error), then sends the held acks.
    async fn end_read(&mut self) -> Result<(), CliError> {
        if let Some(consumer) = self.consumer.take() {
            self.channel
                .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
                .await
                .map_err(CliError::broker(format!("reading queue {:?}", self.queue)))?;
            drop(consumer);
        }
        for (tag, _) in std::mem::take(&mut self.deferred) {
            self.send_ack(tag).await?;
        }
        Ok(())
    }

    /// Acks `tag` (of a letter read at `since`) now, or, while the consumer
    /// reads, holds the ack back when it would let the broker send past the
    /// walk (`acked + prefetch > count`); [`Walk::end_read`] sends held acks.
    async fn ack(&mut self, tag: u64, since: Instant) -> Result<(), CliError> {
        if self.consumer.is_some() && self.acked + 1 + self.prefetch > self.count {
            self.deferred.push((tag, since));
            return Ok(());
        }
        self.send_ack(tag).await
    }

    async fn send_ack(&mut self, tag: u64) -> Result<(), CliError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await
            .map_err(CliError::broker(format!(
                "acking a message of {:?}",
                self.queue
            )))?;
        self.acked += 1;
        Ok(())
    }

    fn hold(&self, tag: u64, properties: BasicProperties, data: Vec<u8>) -> Held {
        let message = message_from_letter(&self.queue, &properties, data);
        Held {
            tag,
            since: Instant::now(),
            properties,
            letter: Letter::new(message),
        }
    }

    /// What is left of the budget of `held` and of the oldest held ack,
    /// or an error (after requeueing `held`).
    async fn left(&mut self, held: &Held) -> Result<Duration, CliError> {
        let oldest = self
            .deferred
            .first()
            .map_or(held.since, |&(_, since)| since.min(held.since));
        match self.budget.checked_sub(oldest.elapsed()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.over_budget(held).await),
        }
    }

    async fn over_budget(&mut self, held: &Held) -> CliError {
        if let Err(e) = self.release(held).await {
            return e;
        }
        CliError::Broker {
            what: format!("walking queue {:?}", self.queue),
            reason: format!(
                "message {:?} could not be settled within the hold budget of {:?} (--hold-budget); it was requeued: rerun to resume",
                held.letter.id(),
                self.budget
            ),
        }
    }

    /// Removes `held` from the queue (see [`Walk::ack`]). Never refused for
    /// the budget: its copy may already be out, and an ack is always better
    /// than a requeue (the budget keeps a margin below `consumer_timeout`).
    async fn remove(&mut self, held: Held) -> Result<(), CliError> {
        self.ack(held.tag, held.since).await
    }

    /// Keeps `held`: republishes it unchanged to the queue's tail with a
    /// confirm, then (once confirmed, see [`Walk::settle`]) acks the original.
    async fn keep(&mut self, held: Held) -> Result<(), CliError> {
        let left = self.left(&held).await?;
        let what = format!(
            "moving message {:?} to the tail of {:?}",
            held.letter.id(),
            self.queue
        );
        let deadline = tokio::time::Instant::now() + left;
        // Sent here, in read order (so the queue keeps its order); only the
        // confirm is awaited in the window.
        let sent = tokio::time::timeout_at(
            deadline,
            self.rotate.basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &held.letter.message.payload,
                held.properties.clone(),
            ),
        )
        .await;
        let publish = tokio::spawn(async move {
            let confirm = match sent {
                Ok(Ok(confirm)) => confirm,
                Ok(Err(e)) => return Err(Failed::Error(CliError::broker(what)(e))),
                Err(_) => return Err(Failed::OverBudget),
            };
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(other)) => Err(Failed::Error(CliError::Broker {
                    what,
                    reason: format!(
                        "the broker did not confirm it ({other:?}); the letter was requeued"
                    ),
                })),
                Ok(Err(e)) => Err(Failed::Error(CliError::broker(what)(e))),
                Err(_) => Err(Failed::OverBudget),
            }
        });
        self.push(Pending { held, publish }).await
    }

    /// Redrives `held`: `publish` (started now, bounded by what is left of
    /// the letter's budget) sends its copy; once it is confirmed the letter
    /// is acked (see [`Walk::settle`]).
    async fn redrive<F>(&mut self, held: Held, publish: F) -> Result<(), CliError>
    where
        F: Future<Output = Result<(), CliError>> + Send + 'static,
    {
        let left = self.left(&held).await?;
        let publish = tokio::spawn(async move {
            match tokio::time::timeout(left, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Failed::Error(e)),
                Err(_) => Err(Failed::OverBudget),
            }
        });
        self.push(Pending { held, publish }).await
    }

    /// Adds a pending letter; settles the oldest ones while the window is full.
    async fn push(&mut self, pending: Pending) -> Result<(), CliError> {
        self.pending_bytes += pending.held.letter.message.payload.len();
        self.pending.push_back(pending);
        while self.pending.len() >= self.window
            || (self.pending.len() > 1 && self.pending_bytes > WINDOW_BYTES)
        {
            self.settle().await?;
        }
        Ok(())
    }

    /// Waits for the oldest pending copy: acks its letter when it was
    /// confirmed, else requeues the letter, settles the rest the same way,
    /// and returns the error.
    async fn settle(&mut self) -> Result<(), CliError> {
        let Some(first) = self.pending.pop_front() else {
            return Ok(());
        };
        let Err(error) = self.settle_one(first).await else {
            return Ok(());
        };
        while let Some(next) = self.pending.pop_front() {
            let _ = self.settle_one(next).await;
        }
        Err(error)
    }

    async fn settle_one(&mut self, p: Pending) -> Result<(), CliError> {
        self.pending_bytes -= p.held.letter.message.payload.len();
        let outcome = p.publish.await.unwrap_or_else(|e| {
            Err(Failed::Error(CliError::Broker {
                what: format!("publishing a copy of {:?}", p.held.letter.id()),
                reason: e.to_string(),
            }))
        });
        match outcome {
            Ok(()) => self.remove(p.held).await,
            Err(Failed::OverBudget) => Err(self.over_budget(&p.held).await),
            Err(Failed::Error(e)) => {
                self.release(&p.held).await?;
                Err(e)
            }
        }
    }

    /// Settles every pending letter.
    async fn drain(&mut self) -> Result<(), CliError> {
        while !self.pending.is_empty() {
            self.settle().await?;
        }
        Ok(())
    }

    /// Returns `held` to the queue unchanged (its head: error paths only).
    async fn release(&self, held: &Held) -> Result<(), CliError> {
        self.channel
            .basic_nack(
                held.tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .map_err(CliError::broker(format!(
                "returning a message to {:?}",
                self.queue
            )))
    }

    /// Cancels the consumer, sends the held acks, settles what is pending,
    /// then closes both channels (the broker requeues anything still
    /// unacked: on error paths only).
    async fn finish(mut self) -> Result<(), CliError> {
        // The consumer first (a walk that stopped early still has one), so
        // no ack below frees a slot the broker would fill; then the held
        // acks (their letters' copies were confirmed, or they were purged),
        // so they are removed even when the walk stopped early.
        let ended = self.end_read().await;
        let drained = self.drain().await.and(ended);
        let what = format!("closing the walk of {:?}", self.queue);
        let _ = self.rotate.close(200, "OK".into()).await;
        self.channel
            .close(200, "OK".into())
            .await
            .map_err(CliError::broker(what))?;
        drained
    }
}

impl RabbitDlq {
    /// Connects to `url` and checks that `queue` exists; `budget` bounds how
    /// long one letter may stay unacked (see the module docs).
    pub async fn open(url: &str, queue: &str, budget: Duration) -> Result<Self, CliError> {
        let rabbit = RabbitMq::connect(url)
            .await
            .map_err(|e| CliError::rabbit_connect(url, e))?;
        if ShortString::try_new(queue).is_err() {
            return Err(CliError::Usage(format!(
                "queue name {queue:?} is longer than 255 bytes"
            )));
        }
        let dlq = RabbitDlq {
            rabbit,
            queue: queue.to_owned(),
            budget,
        };
        dlq.count().await?;
        Ok(dlq)
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// A confirming publisher on this broker.
    pub fn publisher(&self) -> backstop_rabbitmq::RabbitPublisher {
        self.rabbit.publisher()
    }

    async fn count(&self) -> Result<u32, CliError> {
        self.rabbit
            .message_count(&self.queue)
            .await
            .map_err(|e| match e {
                TopologyError::Mismatch { reason, .. }
                    if reason.contains("NOT_FOUND") || reason.contains("no queue") =>
                {
                    CliError::MissingQueue(self.queue.clone())
                }
                other => CliError::Broker {
                    what: format!("inspecting queue {:?}", self.queue),
                    reason: crate::error::redact_all(&other.to_string()),
                },
            })
    }

    /// Starts a walk with up to `window` letters pending at once.
    async fn start(&self, window: usize) -> Result<Walk, CliError> {
        let remaining = self.count().await?;
        let channel = open_channel(&self.rabbit).await?;
        let rotate = open_channel(&self.rabbit).await?;
        rotate
            .confirm_select(ConfirmSelectOptions { nowait: false })
            .await
            .map_err(CliError::broker("enabling publisher confirms"))?;
        let window = window.max(1);
        let prefetch = remaining.min(u32::try_from(window).unwrap_or(u32::MAX));
        let consumer = if remaining > 0 {
            let what = format!("reading queue {:?}", self.queue);
            channel
                .basic_qos(
                    u16::try_from(prefetch).unwrap_or(u16::MAX),
                    BasicQosOptions { global: false },
                )
                .await
                .map_err(CliError::broker(what.clone()))?;
            Some(
                channel
                    .basic_consume(
                        self.queue.as_str().into(),
                        CONSUMER_TAG.into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(CliError::broker(what))?,
            )
        } else {
            None
        };
        Ok(Walk {
            channel,
            rotate,
            queue: self.queue.clone(),
            count: remaining,
            remaining,
            budget: self.budget,
            pending: VecDeque::new(),
            pending_bytes: 0,
            window,
            prefetch,
            acked: 0,
            deferred: Vec::new(),
            consumer,
        })
    }

    /// Calls `visit` with every letter, one copy per message id with its copy
    /// count; every letter stays in the queue, in order. `visit` sees a
    /// letter once all its copies up to that point were counted, so a copy
    /// found later in the walk is reported through `more_copies`.
    pub async fn each(
        &self,
        mut visit: impl FnMut(Letter) -> Result<(), CliError>,
        mut more_copies: impl FnMut(&str),
    ) -> Result<(), CliError> {
        let mut walk = self.start(WINDOW).await?;
        let mut seen = Scratch::new()?;
        let result = async {
            while let Some(held) = walk.next(self).await? {
                let letter = held.letter.clone();
                walk.keep(held).await?;
                if seen.sight(letter.id())? == 1 {
                    visit(letter)?;
                } else {
                    more_copies(letter.id());
                }
            }
            walk.drain().await
        }
        .await;
        walk.finish().await?;
        result
    }

    /// Republishes each selected letter with a confirm, then acks it (and
    /// every other copy of it).
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
    ) -> Result<Report, CliError> {
        let publisher = self.rabbit.publisher();
        let mut pacer = Pacer::new(options.rate)?;
        // Paced: one letter at a time, so none waits unacked for a slot.
        let window = if options.rate.is_some() { 1 } else { WINDOW };
        let mut walk = self.start(window).await?;
        let bar = progress(u64::from(walk.remaining), "replaying");
        let watch = &options.watch;
        watch.see(Step::Started {
            letters: u64::from(walk.remaining),
        });
        let mut report = Report {
            dry_run: options.dry_run,
            ..Report::default()
        };
        // The selected letters by message id: the first copy decides, later
        // copies follow it (removed when it was, kept when it was refused).
        let mut copies = Scratch::new()?;
        let result = async {
            loop {
                // Paced before the read, so no letter waits unacked for a slot.
                if !options.dry_run {
                    pacer.tick().await;
                }
                // Stopped between letters: those in flight are confirmed
                // and acked by the drain below, none is held half-way.
                if watch.stopped() {
                    break;
                }
                let Some(held) = walk.next(self).await? else {
                    break;
                };
                bar.inc(1);
                watch.see(Step::Walked);
                let id = held.letter.id().to_owned();
                let mark = copies.mark(&id)?;
                if mark == Some(Mark::Removed) {
                    report.copies += 1;
                    walk.remove(held).await?;
                    continue;
                }
                if mark == Some(Mark::Kept) || !filter.matches(&held.letter) {
                    walk.keep(held).await?;
                    continue;
                }
                copies.sight(&id)?;
                let replays = held.letter.message.replayed();
                if replays >= options.max_replays {
                    report.add_refused(&id, replays);
                    watch.see(Step::Refused { id: &id });
                    copies.set_mark(&id, Mark::Kept)?;
                    walk.keep(held).await?;
                    continue;
                }
                let destination = match destination(&self.queue, &held.letter, options) {
                    Ok(d) => d,
                    Err(e) => {
                        walk.release(&held).await?;
                        return Err(e);
                    }
                };
                if options.dry_run {
                    report.add_replayed(&id, &destination);
                    copies.set_mark(&id, Mark::Kept)?;
                    walk.keep(held).await?;
                    continue;
                }
                let copy = redrive_copy(&held.letter.message);
                let (publisher, to, dest) =
                    (publisher.clone(), options.to.clone(), destination.clone());
                let what = id.clone();
                walk.redrive(held, async move {
                    match &to {
                        Some(to) => publisher.publish(to, &copy).await,
                        None => publisher.publish_to_queue(&dest, &copy).await,
                    }
                    .map_err(|e| CliError::Republish {
                        id: what,
                        destination: dest.clone(),
                        reason: e.to_string(),
                    })
                })
                .await?;
                copies.set_mark(&id, Mark::Removed)?;
                report.add_replayed(&id, &destination);
                watch.see(Step::Replayed {
                    id: &id,
                    to: &destination,
                });
            }
            walk.drain().await
        }
        .await;
        bar.finish_and_clear();
        let finished = walk.finish().await;
        publisher.close().await;
        finished?;
        result.map(|()| report)
    }

    /// Acks (removes) each selected letter, every copy of it.
    pub async fn purge(&self, filter: &Filter, watch: &Watch) -> Result<Report, CliError> {
        let mut walk = self.start(WINDOW).await?;
        watch.see(Step::Started {
            letters: u64::from(walk.remaining),
        });
        let mut report = Report {
            purge: true,
            ..Report::default()
        };
        let mut copies = Scratch::new()?;
        let result = async {
            while !watch.stopped()
                && let Some(held) = walk.next(self).await?
            {
                watch.see(Step::Walked);
                let id = held.letter.id().to_owned();
                if copies.mark(&id)? == Some(Mark::Removed) {
                    report.copies += 1;
                    walk.remove(held).await?;
                } else if filter.matches(&held.letter) {
                    walk.remove(held).await?;
                    copies.sight(&id)?;
                    copies.set_mark(&id, Mark::Removed)?;
                    report.add_purged(&id);
                    watch.see(Step::Purged { id: &id });
                } else {
                    walk.keep(held).await?;
                }
            }
            walk.drain().await
        }
        .await;
        walk.finish().await?;
        result.map(|()| report)
    }
}

/// A new channel on `rabbit`.
async fn open_channel(rabbit: &RabbitMq) -> Result<Channel, CliError> {
    rabbit.channel().await.map_err(|e| CliError::Broker {
        what: "opening a channel".into(),
        reason: crate::error::redact_all(&e.to_string()),
    })
}

/// Where a redrive goes: `--to`, else the queue whose DLQ this is
/// (`<queue>.dlq` → `<queue>`). Never a header: `x-backstop-original-source`
/// is informational (a letter's headers are not trusted for routing).
pub(crate) fn destination(
    dlq: &str,
    letter: &Letter,
    options: &ReplayOptions,
) -> Result<String, CliError> {
    if let Some(to) = &options.to {
        return Ok(to.clone());
    }
    match dlq.strip_suffix(".dlq") {
        Some(source) if !source.is_empty() => Ok(source.to_owned()),
        _ => Err(CliError::Usage(format!(
            "message {:?}: the DLQ {dlq:?} is not named <queue>.dlq, so its source queue is unknown: give the destination with --to",
            letter.id()
        ))),
    }
}
