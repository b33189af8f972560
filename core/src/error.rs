//! The verdict chain: why a message failed ([`ErrorKind`]), the handler's
//! verdict ([`HandlerError`]), the failure a dead letter carries
//! ([`Failure`]) and the stack's own error ([`Error`]).
//!
//! The failures of the parts around the stack live beside the trait they
//! belong to and are re-exported here: a sink's [`SinkError`], the
//! idempotency store's [`StoreError`], the acker's [`AckError`].

use std::fmt;
use std::time::{Duration, SystemTime};

/// A type-erased error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub use crate::delivery::AckError;
pub use crate::idempotency::StoreError;
pub use crate::sink::SinkError;

/// Why a message failed; written to [`wire::ERROR_KIND`](crate::wire::ERROR_KIND) on DLQ copies.
///
/// Non-exhaustive: a later release may add kinds (a worker of an earlier
/// release reads an unknown wire name as `permanent`); match with a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The payload could not be decoded.
    Decode,
    /// The handler said the message can never succeed.
    Permanent,
    /// Transient failures used up every attempt.
    Exhausted,
    /// The handler panicked.
    Panic,
    /// The handler ran past its timeout (on every attempt).
    Timeout,
    /// The payload is larger than the configured maximum.
    TooLarge,
    /// Runs of the message ended without a result (the process died or hung
    /// past its lease) until its attempts were spent; it was not run again.
    Crashed,
    /// The message was older than the stack's time to live when it was
    /// consumed (by its timestamp or its `expires-at` header); not run.
    Expired,
    /// No handler is routed for the message's type; not run.
    UnknownType,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Decode,
        ErrorKind::Permanent,
        ErrorKind::Exhausted,
        ErrorKind::Panic,
        ErrorKind::Timeout,
        ErrorKind::TooLarge,
        ErrorKind::Crashed,
        ErrorKind::Expired,
        ErrorKind::UnknownType,
    ];

    /// The wire name (`decode`, `permanent`, `exhausted`, `panic`, `timeout`,
    /// `too_large`, `crashed`, `expired`, `unknown_type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Expired => "expired",
            ErrorKind::UnknownType => "unknown_type",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "decode" => ErrorKind::Decode,
            "permanent" => ErrorKind::Permanent,
            "exhausted" => ErrorKind::Exhausted,
            "panic" => ErrorKind::Panic,
            "timeout" => ErrorKind::Timeout,
            "too_large" => ErrorKind::TooLarge,
            "crashed" => ErrorKind::Crashed,
            "expired" => ErrorKind::Expired,
            "unknown_type" => ErrorKind::UnknownType,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The handler's verdict on a failed run.
///
/// `Transient` failures are retried (after `retry_after` if given); `Permanent`
/// ones go straight to the DLQ. Build them with [`HandlerError::transient`] and
/// [`HandlerError::permanent`], or derive the conversion with `#[derive(Classify)]`.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later.
    #[error("transient failure: {source}")]
    Transient {
        /// What went wrong.
        #[source]
        source: BoxError,
        /// Wait at least this long before the next attempt.
        retry_after: Option<Duration>,
        /// The kind written to the DLQ if the attempts run out
        /// ([`ErrorKind::Exhausted`] or [`ErrorKind::Timeout`]).
        kind: ErrorKind,
    },
    /// A dependency the handler needs (its database, its store) is down:
    /// the message is requeued (nacked after a backoff, or postponed through
    /// the delay queue on a RabbitMQ quorum queue) without counting an
    /// attempt, and never dead-lettered for it. It is an outage signal for
    /// the runner's [breaker](crate::breaker).
    #[error("dependency unavailable: {source}")]
    Unavailable {
        /// What is down.
        #[source]
        source: BoxError,
    },
    /// Never retry: dead-letter now.
    #[error("permanent failure: {source}")]
    Permanent {
        /// What went wrong.
        #[source]
        source: BoxError,
        /// Why ([`ErrorKind::Permanent`], `Decode`, `Panic` or `TooLarge`).
        kind: ErrorKind,
    },
}

impl HandlerError {
    /// A transient failure: retried with backoff.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        HandlerError::Transient {
            source: source.into(),
            retry_after: None,
            kind: ErrorKind::Exhausted,
        }
    }

    /// A permanent failure: dead-lettered without retry.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self::permanent_with(ErrorKind::Permanent, source)
    }

    /// A permanent failure of a given kind.
    pub fn permanent_with(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        HandlerError::Permanent {
            source: source.into(),
            kind,
        }
    }

    /// A dependency is down: defer the message without counting an attempt.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        HandlerError::Unavailable {
            source: source.into(),
        }
    }

    /// A timed-out run: transient, dead-lettered as `timeout` when attempts run out.
    pub fn timeout(source: impl Into<BoxError>) -> Self {
        HandlerError::Transient {
            source: source.into(),
            retry_after: None,
            kind: ErrorKind::Timeout,
        }
    }

    /// Asks for the next attempt no sooner than `delay` (transient errors only).
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        if let HandlerError::Transient { retry_after, .. } = &mut self {
            *retry_after = Some(delay);
        }
        self
    }

    /// True for a transient failure.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient { .. })
    }

    /// The kind this error is dead-lettered with (`Unavailable` never is;
    /// it reports `exhausted`, the kind it would get if it were counted).
    pub fn kind(&self) -> ErrorKind {
        match self {
            HandlerError::Transient { kind, .. } | HandlerError::Permanent { kind, .. } => *kind,
            HandlerError::Unavailable { .. } => ErrorKind::Exhausted,
        }
    }
}

/// Why a message is to be dead-lettered: the handler's final failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub kind: ErrorKind,
    /// The error's message (with its sources).
    pub message: String,
    /// The attempt number that failed last.
    pub attempts: u32,
    /// When the message failed first (carried across republished retries).
    pub first_failure: SystemTime,
    /// When the message failed last.
    pub last_failure: SystemTime,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} after {} attempt(s): {}",
            self.kind, self.attempts, self.message
        )
    }
}

/// What the stack returns when it could not settle a message with an [`Outcome`](crate::outcome::Outcome).
///
/// Every variant but `Failed` means "not now": the [`AckLayer`](crate::ack::AckLayer)
/// nacks the message with requeue after a backoff, and it is never dead-lettered
/// for it. `Failed` is turned into a dead letter by the
/// [`DeadLetterLayer`](crate::dead_letter::DeadLetterLayer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handler failed for good; the message belongs in the DLQ.
    #[error("message failed: {0}")]
    Failed(Failure),
    /// The DLQ write was not confirmed by the broker; the source stays unacked.
    #[error("dead-letter write was not confirmed, the message stays on its source: {source}")]
    DeadLetter {
        /// The sink's error.
        #[source]
        source: SinkError,
        /// The failure the letter carries (kept by the idempotency store,
        /// or in the process without one, so a redelivery retries only the
        /// DLQ write, with this failure).
        failure: Box<Failure>,
    },
    /// The delayed-retry republish was not confirmed; the source stays unacked.
    #[error("delayed-retry republish was not confirmed, the message stays on its source: {source}")]
    Retry {
        /// The sink's error.
        #[source]
        source: SinkError,
        /// Failed runs so far.
        attempts: u32,
    },
    /// The idempotency store could not be reached; the message is requeued
    /// (nacked after a backoff, or postponed through a delay queue).
    #[error("idempotency store unavailable, message requeued: {0}")]
    Store(#[source] StoreError),
    /// A dependency of the handler is down; the message is requeued, the attempt not counted.
    #[error("a dependency of the handler is unavailable, message requeued: {0}")]
    Unavailable(#[source] BoxError),
    /// Shutdown interrupted the message; it does not count as a failure and is redelivered.
    #[error("shutdown interrupted the message; it is left for redelivery")]
    Shutdown,
    /// Another live worker holds the key's lease; the message is requeued.
    #[error("key {key:?} is being processed by another worker, message requeued")]
    Busy {
        /// The idempotency key (hashed if long).
        key: String,
    },
}

impl Error {
    /// True for a dependency outage (the store down, a handler's
    /// [`HandlerError::Unavailable`], the inbox unable to connect): the
    /// signal the [breaker](crate::breaker) counts.
    pub fn is_outage(&self) -> bool {
        matches!(self, Error::Store(_) | Error::Unavailable(_))
    }

    /// True for an error that says "not now" without spending an attempt:
    /// an outage or a key busy elsewhere. On a queue with a retry sink (a
    /// RabbitMQ quorum queue) the [`AckLayer`](crate::ack::AckLayer)
    /// postpones such a message through its delay queue instead of nacking
    /// it, since every requeue spends the broker's delivery count.
    pub fn postpones(&self) -> bool {
        self.is_outage() || matches!(self, Error::Busy { .. })
    }

    /// True when this message's dead letter can never be written as it is
    /// (the sink's error [is permanent](SinkError::is_permanent)): retrying
    /// the write would loop forever, so the [`Runner`](crate::runner::Runner) stops
    /// consuming the source instead (the message stays unacked).
    pub fn is_unwritable_letter(&self) -> bool {
        matches!(self, Error::DeadLetter { source, .. } if source.is_permanent())
    }

    /// Failed handler runs this error stands for, to be remembered by the
    /// idempotency store; `None` for errors that count no attempt.
    pub fn failed_runs(&self) -> Option<u32> {
        match self {
            Error::Failed(failure) => Some(failure.attempts),
            Error::DeadLetter { failure, .. } => Some(failure.attempts),
            Error::Retry { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }
}

/// Renders an error with its chain of sources: `outer: inner: root`, with
/// the password of every URL in it hidden ([`crate::redact::redact_text`]):
/// this text goes into `x-backstop-error` and logs.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    crate::redact::redact_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_wire_names() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ErrorKind::parse("nope"), None);
    }

    #[test]
    fn retry_after_applies_to_transient_only() {
        let t = HandlerError::transient("x").retry_after(Duration::from_secs(5));
        assert!(
            matches!(t, HandlerError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(5))
        );
        let p = HandlerError::permanent("x").retry_after(Duration::from_secs(5));
        assert_eq!(p.kind(), ErrorKind::Permanent);
        assert!(!p.is_transient());
    }

    #[test]
    fn chain_hides_passwords_in_urls() {
        let e = std::io::Error::other("GET https://bot:tok3n@api.example/v1 failed");
        let text = chain(&e);
        assert!(!text.contains("tok3n"), "{text}");
        assert!(
            text.contains("https://bot:***@api.example/v1 failed"),
            "{text}"
        );
    }

    #[test]
    fn chain_renders_sources() {
        let e = HandlerError::permanent("root cause");
        assert_eq!(chain(&e), "permanent failure: root cause");
    }
}
