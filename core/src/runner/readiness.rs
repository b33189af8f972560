//! [`Readiness`]: whether a runner is consuming, for a health endpoint.

use std::sync::{Arc, Mutex};

/// Whether a [`Runner`](super::Runner) is ready: its source passed the
/// start-up check ([`Source::preflight`](super::Source::preflight)) and is
/// connected. Not ready while starting, while the broker cannot be reached
/// (the source reconnects with backoff), while its [breaker](crate::breaker)
/// is open, half-open or paused, and after the run stopped, each with a
/// reason. Cheap to clone; every clone sees the same state.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<Mutex<Result<(), String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Arc::new(Mutex::new(Err("starting".to_owned()))),
        }
    }
}

impl Readiness {
    /// True when the runner is consuming.
    pub fn is_ready(&self) -> bool {
        self.get().is_ok()
    }

    /// `Ok` when ready, else why not.
    pub fn get(&self) -> Result<(), String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn ready(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Ok(());
    }

    pub(crate) fn not_ready(&self, reason: impl Into<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Err(reason.into());
    }
}
