//! The metric keys backstop records per message, built once per stack from
//! its [`MetricLabels`]: recording one costs neither an allocation nor a
//! formatted key.

use metrics::{Counter, Gauge, Histogram, Level, Metadata};

use super::handle::Handle;
use super::{HANDLER_DURATION, IN_FLIGHT, MESSAGES_TOTAL, MetricLabels};
use crate::error::Error;
use crate::outcome::Outcome;

/// Where the recorder is told backstop's metrics come from (as the
/// `metrics` macros would say from this module).
pub(crate) static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The outcome labels, in the order [`MessageKeys::of`] indexes them.
const OUTCOMES: [&str; 6] = [
    "handled",
    "dead_lettered",
    "deferred",
    "duplicate",
    "nacked",
    "discarded",
];

/// The counter and the histogram of one outcome label.
pub(super) struct OutcomeKeys {
    total: Handle<Counter>,
    duration: Handle<Histogram>,
}

/// Every key one stack records per message.
pub(crate) struct MessageKeys {
    by_outcome: [OutcomeKeys; 6],
    in_flight: Handle<Gauge>,
}

impl MessageKeys {
    /// The keys of a consumer labelled `labels`.
    pub(crate) fn new(labels: &MetricLabels) -> Self {
        MessageKeys {
            by_outcome: OUTCOMES.map(|outcome| OutcomeKeys {
                total: Handle::new(labels.key(MESSAGES_TOTAL, &[("outcome", outcome)])),
                duration: Handle::new(labels.key(HANDLER_DURATION, &[("outcome", outcome)])),
            }),
            in_flight: Handle::new(labels.key(IN_FLIGHT, &[])),
        }
    }

    /// The keys of a result's outcome label ([`super::label`]).
    pub(super) fn of(&self, result: &Result<Outcome, Error>) -> &OutcomeKeys {
        &self.by_outcome[match result {
            Ok(Outcome::Handled) => 0,
            Ok(Outcome::DeadLettered { .. }) => 1,
            Ok(Outcome::Deferred { .. }) => 2,
            Ok(Outcome::Duplicate) => 3,
            Err(_) => 4,
            Ok(Outcome::Discarded { .. }) => 5,
        }]
    }

    /// Moves the in-flight gauge by `delta`.
    #[inline]
    pub(super) fn in_flight(&self, delta: f64) {
        self.in_flight.get().increment(delta);
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys").finish_non_exhaustive()
    }
}

impl OutcomeKeys {
    /// Counts one message and records how long it took, in seconds.
    pub(super) fn record(&self, seconds: f64) {
        self.duration.get().record(seconds);
        self.total.get().increment(1);
    }

    /// The outcome label these keys carry.
    #[cfg(test)]
    fn label(&self) -> Option<&str> {
        self.total
            .key()
            .labels()
            .find(|l| l.key() == "outcome")
            .map(metrics::Label::value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_the_keys_of_its_label() {
        let results = [
            Ok(Outcome::Handled),
            Ok(Outcome::DeadLettered {
                kind: crate::error::ErrorKind::Decode,
            }),
            Ok(Outcome::Deferred {
                attempt: 2,
                due: std::time::SystemTime::UNIX_EPOCH,
            }),
            Ok(Outcome::Duplicate),
            Err(Error::Shutdown),
            Ok(Outcome::Discarded {
                kind: crate::error::ErrorKind::Expired,
            }),
        ];
        let keys = MessageKeys::new(&MetricLabels::new("q", "q"));
        for result in &results {
            assert_eq!(keys.of(result).label(), Some(super::super::label(result)));
        }
        for keys in &keys.by_outcome {
            assert_eq!(keys.total.key().name(), MESSAGES_TOTAL);
            assert_eq!(keys.duration.key().name(), HANDLER_DURATION);
        }
    }
}
