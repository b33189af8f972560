//! The runner's halt: caused by a delivery whose dead letter can never be written.

use crate::{AckError, Settled};

/// Gauge: 1 while a runner of this process is halted because a dead letter
/// could never be written (see the [runner docs](super#halting-on-a-letter-that-can-never-be-written)).
pub const HALTED: &str = "backstop_runner_halted";

/// Why the runner must halt after `result`, if it must: the delivery was
/// nacked because its dead letter can never be written.
pub(super) fn reason(result: &Result<Settled, AckError>) -> Option<String> {
    match result {
        Ok(Settled::Nacked(error)) if error.is_unwritable_letter() => {
            Some(crate::error::chain(error))
        }
        _ => None,
    }
}

/// Sets the runner's [`HALTED`] gauge.
pub(super) fn record(labels: &crate::metrics::MetricLabels) {
    crate::metrics::describe();
    labels.gauge(HALTED).set(1.0);
}
