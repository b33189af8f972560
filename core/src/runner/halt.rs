//! The runner's halt: caused by a delivery whose dead letter can never be written.

use tower::Service;

use super::driver::Run;
use super::{RunError, Runner, Source};
use crate::ack::Settled;
use crate::delivery::Delivery;
use crate::error::AckError;

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

impl<Src, Svc> Runner<Src, Svc>
where
    Src: Source,
    Svc: Service<Delivery, Response = Settled, Error = AckError> + Send + 'static,
    Svc::Future: Send + 'static,
{
    /// Stops consuming after a letter that can never be written: in-flight
    /// work finishes, the source closes, and the runner stays not ready
    /// until shutdown.
    pub(super) async fn halt(mut self, reason: String, mut run: Run<Svc::Future>) -> RunError {
        tracing::error!(
            %reason,
            "a dead letter can never be written; this runner stopped consuming its source and stays not ready until restarted"
        );
        record(&self.labels);
        self.readiness.not_ready(format!(
            "halted: a dead letter can never be written, the message stays on its source: {reason}"
        ));
        run.drain(self.deadline).await;
        self.source.close().await;
        // Halted is not stuck: the loop keeps beating until shutdown.
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                _ = run.tick.tick() => run.pulse.beat(),
            }
        }
        RunError::Halted {
            reason,
            summary: run.summary,
        }
    }
}
