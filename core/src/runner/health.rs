//! [`Health`]: what a runner tells its liveness and readiness probes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Liveness, Readiness};

/// A runner's health, for a process's `/healthz` and `/readyz` (the
/// `backstop-ops` crate serves them): its [`Readiness`] and the
/// [`Liveness`] of every loop it depends on — its own driver loop and
/// whatever its source runs (a Kafka consumer's poll thread). Cheap to
/// clone; every clone sees the same runner.
///
/// ```
/// use std::time::Duration;
/// use backstop::runner::{Health, Liveness};
///
/// let health = Health::default();
/// assert!(health.readiness().get().is_err()); // starting
/// let poll = Liveness::new("poll thread");
/// health.watch(poll.clone());
/// assert!(health.stuck(Duration::from_secs(10)).is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Health {
    readiness: Readiness,
    loops: Arc<Mutex<Vec<Liveness>>>,
}

impl Health {
    /// The runner's readiness.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Counts `loop_` in liveness from now on.
    pub fn watch(&self, loop_: Liveness) {
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(loop_);
    }

    /// The loops watched.
    pub fn loops(&self) -> Vec<Liveness> {
        self.loops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first loop silent for longer than `after`, with its silence:
    /// `None` while every loop turns (or ended).
    pub fn stuck(&self, after: Duration) -> Option<(String, Duration)> {
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| (l, l.silent_for()))
            .find(|(_, silent)| *silent > after)
            .map(|(l, silent)| (l.name().to_owned(), silent))
    }
}
