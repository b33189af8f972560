//! Time to live at consume: a message older than the stack allows, or past
//! the time its producer set in [`wire::EXPIRES_AT`], is not run.
//!
//! A price quote or a "send the code" message that waited in a queue
//! through an outage is worse than useless when it finally runs. With a
//! [`TimeToLive`] on the [`StackBuilder`](crate::stack::StackBuilder), each
//! delivery is checked before its handler runs (inside idempotency, so a
//! redelivery of a message settled as expired is a duplicate):
//!
//! - its age is the time since its timestamp (Kafka's record timestamp,
//!   the AMQP `timestamp` property, the in-memory broker's publish time);
//!   a retry copy from a Kafka retry topic is as old as the message it is
//!   a copy of ([`ORIGINAL_TIMESTAMP`](crate::wire::ORIGINAL_TIMESTAMP);
//!   a RabbitMQ retry copy keeps the AMQP timestamp itself); a message
//!   without a timestamp never expires by age, and one stamped in the
//!   future (a producer's clock ahead of ours) has age zero;
//! - an [`EXPIRES_AT`](crate::wire::EXPIRES_AT) header (RFC 3339 with an
//!   offset, `Z` or `+02:00`; or milliseconds since the Unix epoch, at
//!   least 10¹¹, so a value in seconds is not read as a date in 1970)
//!   expires it at that time, whatever its age; a header that is none of
//!   these (a time without an offset, epoch seconds, text) is ignored with
//!   a warning, never a reason to drop a message;
//! - a message an operator redrove from a DLQ (`x-backstop-replayed` > 0)
//!   never expires: the redrive is the decision to run it.
//!
//! An expired message is dead-lettered with kind `expired` (the default:
//! nothing disappears silently) or, with [`TimeToLive::discard`], acked
//! without running and counted as [`Outcome::Discarded`](crate::outcome::Outcome)
//! (`backstop_messages_total{outcome="discarded"}`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use backstop::expiry::TimeToLive;
//! use backstop::memory::MemoryBroker;
//! use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! let past = backstop::wire::format_time(std::time::SystemTime::UNIX_EPOCH);
//! broker.publish_now("quotes", Message::new("{}").with_header(backstop::wire::EXPIRES_AT, past))?;
//! broker.publish_now("quotes", Message::new("{}"))?;
//!
//! let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
//!     .time_to_live(TimeToLive::max_age(Duration::from_secs(30)))
//!     .build(handler_fn(|_quote: serde_json::Value, _ctx: Context| async {
//!         Ok::<_, HandlerError>(())
//!     }));
//! let summary = Runner::new(broker.consume("quotes", 8).until_drained(), stack).run().await?;
//! assert_eq!(summary.handled, 1);
//! assert_eq!(summary.dead_lettered, 1, "the expired quote");
//! let letter = &broker.peek("quotes.dlq")[0];
//! assert_eq!(letter.header(backstop::wire::ERROR_KIND), Some("expired"));
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime};

use crate::error::{ErrorKind, Failure};
use crate::message::Message;
use crate::wire;

/// What happens to an expired message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExpiry {
    /// Dead-lettered with kind `expired` (after the broker confirmed the
    /// letter), then acked.
    #[default]
    DeadLetter,
    /// Acked without running, counted as discarded.
    Discard,
}

/// When a message is too old to run; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    max_age: Option<Duration>,
    on_expiry: OnExpiry,
}

impl TimeToLive {
    /// Messages older than `age` expire, and so do messages past their
    /// [`EXPIRES_AT`](wire::EXPIRES_AT) header.
    pub const fn max_age(age: Duration) -> Self {
        TimeToLive {
            max_age: Some(age),
            on_expiry: OnExpiry::DeadLetter,
        }
    }

    /// Only messages past their [`EXPIRES_AT`](wire::EXPIRES_AT) header expire.
    pub const fn header_only() -> Self {
        TimeToLive {
            max_age: None,
            on_expiry: OnExpiry::DeadLetter,
        }
    }

    /// Expired messages are acked without running and counted, instead of
    /// dead-lettered.
    #[must_use]
    pub const fn discard(mut self) -> Self {
        self.on_expiry = OnExpiry::Discard;
        self
    }

    /// What happens to an expired message.
    pub const fn on_expiry(&self) -> OnExpiry {
        self.on_expiry
    }

    /// Why `message` has expired at `now`, or `None` if it may run.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use backstop::expiry::TimeToLive;
    /// use backstop::{Message, wire};
    ///
    /// let ttl = TimeToLive::header_only();
    /// let now = SystemTime::now();
    /// let due = Message::new("x").with_header(wire::EXPIRES_AT, "2020-01-01T00:00:00Z");
    /// assert!(ttl.expired(&due, now).unwrap().contains("expired at"));
    /// assert_eq!(ttl.expired(&Message::new("x"), now), None);
    /// ```
    pub fn expired(&self, message: &Message, now: SystemTime) -> Option<String> {
        if message.replayed() > 0 {
            return None;
        }
        if let Some(text) = message.header(wire::EXPIRES_AT) {
            match parse_expires_at(text) {
                Some(at) if at <= now => {
                    return Some(format!(
                        "expired at {} (its {} header); consumed at {}",
                        wire::format_time(at),
                        wire::EXPIRES_AT,
                        wire::format_time(now)
                    ));
                }
                Some(_) => {}
                None => tracing::warn!(
                    message_id = %message.meta.message_id,
                    header = wire::EXPIRES_AT,
                    value = %wire::truncate(text, 64),
                    "ignoring an expiry header that is neither RFC 3339 with an offset nor epoch milliseconds"
                ),
            }
        }
        let max = self.max_age?;
        let stamped = original_timestamp(message).or(message.meta.timestamp)?;
        let age = now.duration_since(stamped).unwrap_or_default();
        (age > max).then(|| {
            format!(
                "{} old when consumed (stamped {}), over its time to live of {}",
                humantime::format_duration(truncate_millis(age)),
                wire::format_time(stamped),
                humantime::format_duration(max)
            )
        })
    }

    /// The failure an expired message is dead-lettered with.
    pub(crate) fn failure(reason: String, attempt: u32, now: SystemTime) -> Failure {
        Failure {
            kind: ErrorKind::Expired,
            message: reason,
            attempts: attempt.saturating_sub(1),
            first_failure: now,
            last_failure: now,
        }
    }
}

/// The smallest epoch-milliseconds value read (1973-03-03): any smaller
/// number is more likely seconds, and is refused rather than guessed.
const MIN_EPOCH_MILLIS: u64 = 100_000_000_000;

/// An [`EXPIRES_AT`](wire::EXPIRES_AT) value: RFC 3339 with an offset, or
/// milliseconds since the Unix epoch (from [`MIN_EPOCH_MILLIS`] to
/// [`wire::MAX_TIME_MILLIS`]).
fn parse_expires_at(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let millis: u64 = text.parse().ok()?;
        return (MIN_EPOCH_MILLIS..=wire::MAX_TIME_MILLIS)
            .contains(&millis)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    }
    let at = text.parse::<jiff::Timestamp>().ok()?;
    SystemTime::try_from(at).ok()
}

/// The first consumption's timestamp a Kafka retry copy carries; only on
/// a copy consumed from backstop's own retry topic (`retry_of`, set by the
/// adapter, never from a header), so a producer's header is not believed.
fn original_timestamp(message: &Message) -> Option<SystemTime> {
    message.meta.retry_of.as_ref()?;
    wire::parse_time(message.header(wire::ORIGINAL_TIMESTAMP)?)
}

/// `d` to whole milliseconds, for a readable age.
fn truncate_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "expiry_tests.rs"]
mod tests;
