//! [`Outcome`]: what the stack did with a message it settled.

use std::time::SystemTime;

use crate::error::ErrorKind;

/// What the inner stack did with a message. Every outcome is acked.
///
/// Non-exhaustive: a later release may settle messages in new ways; match
/// with a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded.
    Handled,
    /// The message was written to the DLQ and the broker confirmed it.
    DeadLettered {
        /// Why.
        kind: ErrorKind,
    },
    /// The message was republished for a broker-delayed retry (confirmed).
    Deferred {
        /// The attempt number the republished copy is for.
        attempt: u32,
        /// When the copy is due.
        due: SystemTime,
    },
    /// The message was a duplicate of one already completed or dead-lettered.
    Duplicate,
    /// The message was acked without running, as configured (an expired
    /// message under [`TimeToLive::discard`](crate::expiry::TimeToLive::discard)).
    Discarded {
        /// Why ([`ErrorKind::Expired`]).
        kind: ErrorKind,
    },
}

impl Outcome {
    /// The metric label: `handled`, `dead_lettered`, `deferred`, `duplicate`, `discarded`.
    pub const fn label(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Duplicate => "duplicate",
            Outcome::Discarded { .. } => "discarded",
        }
    }
}
