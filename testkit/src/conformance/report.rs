use std::collections::{BTreeSet, HashMap};
use std::fmt;

use backstop::error::BoxError;

/// What a scenario saw, compared by message id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Messages published.
    pub sent: usize,
    /// Deliveries seen, redeliveries included.
    pub deliveries: usize,
    /// Distinct expected ids seen.
    pub received: usize,
    /// Expected ids never seen.
    pub missing: Vec<String>,
    /// Ids seen that were not expected.
    pub extra: Vec<String>,
}

impl Report {
    /// Compares `seen` (id → deliveries) with `expected`.
    pub fn compare(
        scenario: &'static str,
        expected: &BTreeSet<String>,
        seen: &HashMap<String, usize>,
    ) -> Self {
        Report {
            scenario,
            sent: expected.len(),
            deliveries: seen.values().sum(),
            received: expected.iter().filter(|id| seen.contains_key(*id)).count(),
            missing: expected
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .cloned()
                .collect(),
            extra: seen
                .keys()
                .filter(|id| !expected.contains(*id))
                .cloned()
                .collect(),
        }
    }

    /// Fails unless nothing is missing and nothing foreign arrived.
    pub fn ensure(self) -> Result<Self, ConformanceError> {
        if self.missing.is_empty() && self.extra.is_empty() {
            Ok(self)
        } else {
            Err(ConformanceError::Mismatch(self))
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: sent {} · deliveries {} · received {} · missing {} · extra {}",
            self.scenario,
            self.sent,
            self.deliveries,
            self.received,
            self.missing.len(),
            self.extra.len()
        )?;
        if !self.missing.is_empty() {
            let head: Vec<_> = self.missing.iter().take(5).collect();
            write!(f, " (first missing: {head:?})")?;
        }
        Ok(())
    }
}

/// A scenario that did not hold.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// Messages went missing or foreign ones arrived.
    #[error("ids differ: {0}")]
    Mismatch(Report),
    /// A specific property did not hold.
    #[error("{scenario}: {what}")]
    Violated {
        /// The scenario.
        scenario: &'static str,
        /// What went wrong.
        what: String,
    },
    /// The harness or broker failed.
    #[error("{scenario}: broker or harness failed: {source}")]
    Broker {
        /// The scenario.
        scenario: &'static str,
        /// The failure.
        #[source]
        source: BoxError,
    },
}

impl ConformanceError {
    pub(crate) fn broker(scenario: &'static str) -> impl FnOnce(BoxError) -> Self {
        move |source| ConformanceError::Broker { scenario, source }
    }
}
