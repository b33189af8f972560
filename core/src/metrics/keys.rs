//! The metric keys backstop records per message, built at compile time from
//! the name constants: recording one costs neither an allocation nor a hash.

use metrics::{Key, Label, Level, Metadata};

use super::{HANDLER_DURATION, IN_FLIGHT, MESSAGES_TOTAL};
use crate::{Error, Outcome};

/// Where the recorder is told backstop's metrics come from (as the
/// `metrics` macros would say from this module).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The in-flight gauge.
static IN_FLIGHT_KEY: Key = Key::from_static_name(IN_FLIGHT);

/// The counter and the histogram of one outcome label.
pub(super) struct OutcomeKeys {
    total: Key,
    duration: Key,
}

macro_rules! outcome_keys {
    ($($label:literal),*) => {
        [$({
            static LABELS: [Label; 1] = [Label::from_static_parts("outcome", $label)];
            OutcomeKeys {
                total: Key::from_static_parts(MESSAGES_TOTAL, &LABELS),
                duration: Key::from_static_parts(HANDLER_DURATION, &LABELS),
            }
        }),*]
    };
}

/// In the order [`keys_of`] indexes them.
static BY_OUTCOME: [OutcomeKeys; 5] = outcome_keys!(
    "handled",
    "dead_lettered",
    "deferred",
    "duplicate",
    "nacked"
);

/// The keys of a result's outcome label ([`super::label`]).
pub(super) fn keys_of(result: &Result<Outcome, Error>) -> &'static OutcomeKeys {
    &BY_OUTCOME[match result {
        Ok(Outcome::Handled) => 0,
        Ok(Outcome::DeadLettered { .. }) => 1,
        Ok(Outcome::Deferred { .. }) => 2,
        Ok(Outcome::Duplicate) => 3,
        Err(_) => 4,
    }]
}

impl OutcomeKeys {
    /// Counts one message and records how long it took, in seconds.
    pub(super) fn record(&self, seconds: f64) {
        metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(&self.duration, &METADATA)
                .record(seconds);
            recorder
                .register_counter(&self.total, &METADATA)
                .increment(1);
        });
    }

    /// The outcome label these keys carry.
    #[cfg(test)]
    fn label(&self) -> Option<&str> {
        self.total.labels().next().map(Label::value)
    }
}

/// Moves the in-flight gauge by `delta`.
pub(super) fn in_flight(delta: f64) {
    metrics::with_recorder(|recorder| {
        recorder
            .register_gauge(&IN_FLIGHT_KEY, &METADATA)
            .increment(delta);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_the_keys_of_its_label() {
        let results = [
            Ok(Outcome::Handled),
            Ok(Outcome::DeadLettered {
                kind: crate::ErrorKind::Decode,
            }),
            Ok(Outcome::Deferred {
                attempt: 2,
                due: std::time::SystemTime::UNIX_EPOCH,
            }),
            Ok(Outcome::Duplicate),
            Err(Error::Shutdown),
        ];
        for result in &results {
            assert_eq!(keys_of(result).label(), Some(super::super::label(result)));
        }
        for keys in &BY_OUTCOME {
            assert_eq!(keys.total.name(), MESSAGES_TOTAL);
            assert_eq!(keys.duration.name(), HANDLER_DURATION);
        }
    }
}
