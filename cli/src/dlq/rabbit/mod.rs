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
//! consumer is cancelled (see `Walk::next` and `Walk::ack` in `walk.rs`), so the walk
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

use std::time::Duration;

use backstop::Message;
use backstop::publish::Publisher;
use backstop_rabbitmq::lapin::BasicProperties;
use backstop_rabbitmq::lapin::types::ShortString;
use backstop_rabbitmq::{RabbitMq, TopologyError, convert::message_from_delivery};

use crate::dlq::scratch::{Mark, Scratch};
use crate::dlq::{
    Filter, Letter, Pacer, ReplayOptions, Report, Step, Watch, progress, redrive_copy,
};
use crate::error::CliError;

mod walk;

pub use self::walk::{WINDOW, WINDOW_BYTES};

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
