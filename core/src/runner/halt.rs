//! The runner's halt: set by a delivery whose dead letter can never be written.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::{AckError, Settled};

/// Gauge: 1 while a runner of this process is halted because a dead letter
/// could never be written (see the [runner docs](super#halting-on-a-letter-that-can-never-be-written)).
pub const HALTED: &str = "backstop_runner_halted";

/// Set once, by the first delivery whose letter can never be written.
#[derive(Clone, Debug, Default)]
pub(super) struct Halt {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Halt {
    /// Resolves once the runner must halt.
    pub(super) async fn halted(&self) {
        self.token.cancelled().await;
    }

    /// Why the runner halted, if it did.
    pub(super) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `settle`, halting the runner if it nacked an unwritable letter.
    pub(super) fn watch(
        self,
        settle: impl Future<Output = Result<Settled, AckError>> + Send + 'static,
    ) -> impl Future<Output = Result<Settled, AckError>> + Send + 'static {
        let halt = self;
        async move {
            let result = settle.await;
            if let Ok(Settled::Nacked(error)) = &result
                && error.is_unwritable_letter()
            {
                halt.reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| crate::error::chain(error));
                halt.token.cancel();
            }
            result
        }
    }
}

/// Sets the [`HALTED`] gauge.
pub(super) fn record() {
    metrics::describe_gauge!(
        HALTED,
        "1 while a runner is halted because a dead letter can never be written"
    );
    metrics::gauge!(HALTED).set(1.0);
}
