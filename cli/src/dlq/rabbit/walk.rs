//! The rotation walk over a RabbitMQ DLQ queue (see the [parent module's
//! docs](super)): one consumer reads the letters, each letter is held until
//! its copy (rotated to the tail, or redriven) is confirmed, and the acks
//! that would let the broker send past the walk are held until its end.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use backstop_rabbitmq::RabbitMq;
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::lapin::{BasicProperties, Channel, Confirmation, Consumer};
use futures::StreamExt as _;

use super::{RabbitDlq, message_from_letter};
use crate::dlq::Letter;
use crate::error::CliError;

/// At most this many letters are unacked (and in memory) at once.
pub const WINDOW: usize = 32;

/// At most this many payload bytes are unacked (and in memory) at once,
/// beyond the first letter.
pub const WINDOW_BYTES: usize = 2 << 20;

/// The tag of a walk's consumer on its own channel.
const CONSUMER_TAG: &str = "backstop-dlq-walk";

/// A letter read and not yet settled.
pub(super) struct Held {
    tag: u64,
    since: Instant,
    properties: BasicProperties,
    pub(super) letter: Letter,
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
pub(super) struct Walk {
    channel: Channel,
    rotate: Channel,
    queue: String,
    /// How many letters the queue held at the start: the walk reads no more.
    count: u32,
    pub(super) remaining: u32,
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
    pub(super) async fn next(&mut self, dlq: &RabbitDlq) -> Result<Option<Held>, CliError> {
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
    pub(super) async fn remove(&mut self, held: Held) -> Result<(), CliError> {
        self.ack(held.tag, held.since).await
    }

    /// Keeps `held`: republishes it unchanged to the queue's tail with a
    /// confirm, then (once confirmed, see [`Walk::settle`]) acks the original.
    pub(super) async fn keep(&mut self, held: Held) -> Result<(), CliError> {
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
    pub(super) async fn redrive<F>(&mut self, held: Held, publish: F) -> Result<(), CliError>
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
    pub(super) async fn drain(&mut self) -> Result<(), CliError> {
        while !self.pending.is_empty() {
            self.settle().await?;
        }
        Ok(())
    }

    /// Returns `held` to the queue unchanged (its head: error paths only).
    pub(super) async fn release(&self, held: &Held) -> Result<(), CliError> {
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
    pub(super) async fn finish(mut self) -> Result<(), CliError> {
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
    /// Starts a walk with up to `window` letters pending at once.
    pub(super) async fn start(&self, window: usize) -> Result<Walk, CliError> {
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
}

/// A new channel on `rabbit`.
async fn open_channel(rabbit: &RabbitMq) -> Result<Channel, CliError> {
    rabbit.channel().await.map_err(|e| CliError::Broker {
        what: "opening a channel".into(),
        reason: crate::error::redact_all(&e.to_string()),
    })
}
