//! [`Signal`]: what one settled delivery tells the breaker.

use crate::ack::Settled;
use crate::error::{AckError, Error, ErrorKind};
use crate::outcome::Outcome;

/// What one settled delivery says about the dependencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Settled without an outage: the dependencies answered.
    Success,
    /// A dependency was down (store, inbox, `Unavailable`).
    Outage,
    /// A transient handler failure left the process (counted only with
    /// [`BreakerConfig::count_transient`](super::BreakerConfig::count_transient)).
    TransientFailure,
    /// Says nothing about the dependencies (an ack that failed, a shutdown,
    /// a key busy elsewhere).
    Neutral,
}

impl Signal {
    /// The signal of a settlement.
    pub fn of(result: &Result<Settled, AckError>) -> Self {
        match result {
            Ok(Settled::Acked(Outcome::Handled | Outcome::Duplicate)) => Signal::Success,
            // Nothing ran: it says nothing about the dependencies (an
            // expired backlog must not close a half-open breaker).
            Ok(Settled::Acked(Outcome::Discarded { .. })) => Signal::Neutral,
            Ok(Settled::Acked(Outcome::Deferred { .. })) => Signal::TransientFailure,
            Ok(Settled::Acked(Outcome::DeadLettered { kind, .. })) => match kind {
                ErrorKind::Exhausted | ErrorKind::Timeout => Signal::TransientFailure,
                ErrorKind::Expired | ErrorKind::UnknownType => Signal::Neutral,
                _ => Signal::Success,
            },
            Ok(Settled::Nacked(error) | Settled::Postponed(error)) => Signal::of_error(error),
            Err(_) => Signal::Neutral,
        }
    }

    /// The signal of a stack error.
    pub fn of_error(error: &Error) -> Self {
        if error.is_outage() {
            Signal::Outage
        } else {
            Signal::Neutral
        }
    }
}
