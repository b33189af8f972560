//! The publish path shared by [`ReliablePublisher`](crate::ReliablePublisher)
//! and [`SpoolingDeadLetterSink`](crate::SpoolingDeadLetterSink): try the
//! broker within the [`Budget`], else write the message to the spool.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backstop::Message;
use tokio::time::Instant;

use crate::outlet::{Class, Failure, Outlet, attempt};
use crate::record::Unit;
use crate::relay::Target;
use crate::{Budget, Spool, SpoolError};

/// What became of a message the publisher accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a spooled message is not on the broker yet"]
pub enum Sent {
    /// The broker confirmed it.
    Confirmed,
    /// The broker did not confirm it in time (or is down, or earlier
    /// messages of its key are still waiting): it is durably in the spool
    /// and the relay will deliver it once the broker takes messages again.
    Spooled,
}

impl Sent {
    /// True when the broker confirmed the message.
    pub fn is_confirmed(self) -> bool {
        self == Sent::Confirmed
    }

    /// True when the message waits in the spool.
    pub fn is_spooled(self) -> bool {
        self == Sent::Spooled
    }
}

/// Why a send was neither confirmed nor spooled.
#[derive(Debug)]
pub(crate) enum SendError<E> {
    /// The outlet refused it for good.
    Rejected(E),
    /// The spool refused it.
    NotSpooled(SpoolError),
}

/// The path a message takes to the broker: the outlet, tried within the
/// budget, else the spool; and the outage flag that sends it straight to
/// the spool while the broker is known to be down.
#[derive(Debug)]
pub(crate) struct SendPath<O> {
    pub(crate) outlet: O,
    pub(crate) spool: Spool,
    pub(crate) budget: Budget,
    /// Set when a send found the broker unreachable; cleared by the relay's
    /// next confirm. While set, sends go straight to the spool.
    outage: AtomicBool,
}

/// The message with a message id fixed once, so every attempt, the spool
/// and the relay carry the same one.
pub(crate) fn with_stable_id(message: &Message) -> Cow<'_, Message> {
    if message.meta.message_id.is_empty() {
        let mut fixed = message.clone();
        fixed.meta.message_id = message.id_for_publish();
        Cow::Owned(fixed)
    } else {
        Cow::Borrowed(message)
    }
}

impl<O: Outlet> SendPath<O> {
    /// A path through `outlet`, spooling to `spool`.
    pub(crate) fn new(outlet: O, spool: Spool, budget: Budget) -> Self {
        SendPath {
            outlet,
            spool,
            budget,
            outage: AtomicBool::new(false),
        }
    }

    /// True while the broker is known to be unreachable.
    pub(crate) fn outage(&self) -> bool {
        self.outage.load(Ordering::Acquire)
    }

    pub(crate) fn broker_down(&self, reason: &dyn std::fmt::Display) {
        if !self.outage.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                spool = %self.spool.config().name,
                error = %reason,
                "broker unreachable: messages go to the spool until the relay gets a confirm"
            );
        }
    }

    pub(crate) fn broker_back(&self) {
        if self.outage.swap(false, Ordering::AcqRel) {
            tracing::info!(
                spool = %self.spool.config().name,
                waiting = self.spool.len(),
                "broker confirms again: publishing directly, the relay drains the spool"
            );
        }
    }

    /// Sends `message` within the budget, else spools it.
    pub(crate) async fn send(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<Sent, SendError<O::Error>> {
        let message = with_stable_id(message);
        let id = message.meta.message_id.as_str();
        let shown = destination.unwrap_or("<default>");
        let unit = Unit::of(destination, &message);
        if self.spool.pending(&unit) > 0 {
            tracing::debug!(
                message_id = id,
                destination = shown,
                "earlier messages of its key are spooled; spooling behind them"
            );
            return self.spool(destination, &message, "behind its key").await;
        }
        if self.outage() {
            tracing::debug!(
                message_id = id,
                destination = shown,
                "broker unreachable; spooling"
            );
            return self
                .spool(destination, &message, "broker unreachable")
                .await;
        }
        let policy = &self.budget.retry;
        let started = Instant::now();
        let mut failed = 0u32;
        let last = loop {
            let failure = match attempt(
                &self.outlet,
                destination,
                &message,
                self.budget.attempt_timeout,
            )
            .await
            {
                Ok(()) => return Ok(Sent::Confirmed),
                Err(Failure::Outlet(e)) if O::class(&e) == Class::Permanent => {
                    tracing::warn!(
                        message_id = id,
                        destination = shown,
                        reason = O::reason(&e),
                        error = %backstop::error::chain(&e),
                        "broker refused the message for good; not spooled"
                    );
                    return Err(SendError::Rejected(e));
                }
                Err(failure) => failure,
            };
            failed += 1;
            let delay = policy.delay(failed);
            let out_of_time = policy
                .max_elapsed
                .is_some_and(|max| started.elapsed() + delay >= max);
            if failed >= policy.max_attempts || out_of_time || self.outage() {
                break failure;
            }
            tracing::debug!(
                message_id = id,
                destination = shown,
                attempt = failed,
                reason = failure.reason::<O>(),
                error = %failure,
                ?delay,
                "publish not confirmed; retrying"
            );
            tokio::time::sleep(delay).await;
        };
        if last.class::<O>() == Class::Unreachable {
            self.broker_down(&last);
        }
        tracing::warn!(
            message_id = id,
            destination = shown,
            attempts = failed,
            reason = last.reason::<O>(),
            error = %last,
            "broker did not confirm the message; spooling it"
        );
        self.spool(destination, &message, last.reason::<O>()).await
    }

    async fn spool(
        &self,
        destination: Option<&str>,
        message: &Message,
        why: &str,
    ) -> Result<Sent, SendError<O::Error>> {
        match self.spool.push(destination, message).await {
            Ok(seq) => {
                tracing::trace!(message_id = %message.meta.message_id, seq, why, "spooled");
                Ok(Sent::Spooled)
            }
            Err(error) => {
                tracing::error!(
                    message_id = %message.meta.message_id,
                    destination = destination.unwrap_or("<default>"),
                    %error,
                    "message was neither confirmed nor spooled"
                );
                Err(SendError::NotSpooled(error))
            }
        }
    }
}

/// A relay of the spool drains into the same broker this path publishes
/// to, and reports the broker's state back to it.
impl<O: Outlet> Target for SendPath<O> {
    type Outlet = O;

    fn outlet(&self) -> &O {
        &self.outlet
    }

    fn attempt_timeout(&self) -> Duration {
        self.budget.attempt_timeout
    }

    fn broker_back(&self) {
        SendPath::broker_back(self);
    }

    fn broker_down(&self, reason: &dyn std::fmt::Display) {
        SendPath::broker_down(self, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_without_id_gets_one_that_stays() {
        let mut m = Message::new("x");
        m.meta.message_id.clear();
        let fixed = with_stable_id(&m);
        assert!(!fixed.meta.message_id.is_empty());
        let kept = Message::new("y").with_message_id("m-1");
        assert!(matches!(with_stable_id(&kept), Cow::Borrowed(_)));
    }
}
