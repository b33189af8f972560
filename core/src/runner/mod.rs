//! [`Runner`]: drives a [`Source`] through a stack with bounded concurrency
//! and shuts down gracefully.
//!
//! # How a message is driven
//!
//! The runner's own task is the driver: one loop that waits, in one
//! `select!`, for a free slot (at most [`concurrency`](Runner::concurrency)
//! messages in flight), the service's readiness, the source's next delivery,
//! the breaker and shutdown, and polls every in-flight message future
//! meanwhile. A delivery becomes one future (`service.call`) in that set;
//! no task is spawned for it, and a panic that escapes it is caught for
//! that message alone (the delivery is redelivered, its lease released).
//! The runner never fetches more than it runs. Handlers that block or burn
//! CPU can opt into a task per message ([`Runner::task_per_message`]).
//!
//! On shutdown (a token, or SIGINT/SIGTERM): stop fetching, cancel the
//! handlers' tokens, let in-flight messages finish until the deadline, drop
//! what did not finish (each such delivery is nacked with requeue by its
//! drop), close the source and return a [`Summary`].
//!
//! The runner's [`Breaker`] (the kill switch, see [`breaker`](crate::breaker))
//! sees every settled delivery. While it is open or paused the runner
//! fetches nothing ([`Source::pause`]; deliveries the source had already
//! received are postponed without running), is not ready, and after the
//! cool-down runs one message at a time until one settles without an
//! outage. [`Runner::breaker`] is also the manual pause/resume of a running
//! runner.
//!
//! # Halting on a letter that can never be written
//!
//! When a message's dead letter can never be written as it is
//! ([`Error::is_unwritable_letter`](crate::error::Error::is_unwritable_letter): too
//! large for the DLQ, unroutable, a missing destination, not authorised),
//! acking it would lose it and retrying would loop forever. The runner
//! *halts*: it stops fetching, lets in-flight messages finish, closes the
//! source (the message stays on its queue or partition, unacked, for the
//! next worker), logs the error, sets the [`HALTED`] gauge to 1 and reports
//! not ready with the reason, until shutdown; [`Runner::run`] then returns
//! [`RunError::Halted`]. The worker does not exit on its own: fix the cause
//! (create or enlarge the DLQ, grant access) and restart it. Spooling such
//! letters locally instead is opt-in (`backstop-spool`'s
//! `SpoolingDeadLetterSink`), and as durable as the disk under the spool.

mod driver;
mod halt;
mod health;
mod in_flight;
mod liveness;
mod readiness;
mod run;
mod slots;
mod source;
mod summary;
#[cfg(test)]
mod tests;

pub use self::halt::HALTED;
pub use self::health::Health;
pub use self::liveness::{BEAT_EVERY, Liveness};
pub use self::readiness::Readiness;
pub use self::source::{MissingDestinations, Source, SourceError};
pub use self::summary::Summary;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::ack::Settled;
use crate::breaker::{Breaker, BreakerConfig};
use crate::delivery::Delivery;
use crate::error::AckError;
use crate::metrics::MetricLabels;

/// A run that could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source failed for good (in-flight work was drained first).
    #[error("source stopped the run: {source}")]
    Source {
        /// The source's error.
        #[source]
        source: SourceError,
        /// What the run did before it stopped.
        summary: Summary,
    },
    /// A message's dead letter could never be written, so the runner stopped
    /// consuming (see [halting](self#halting-on-a-letter-that-can-never-be-written));
    /// returned at shutdown.
    #[error("stopped consuming: {reason}")]
    Halted {
        /// Why: the sink's error.
        reason: String,
        /// What the run did before it halted.
        summary: Summary,
    },
}

/// Drives a source through a stack; see the [module docs](self).
///
/// Shutdown stops fetching, lets the messages in flight finish (until the
/// deadline) and returns what the run did:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use backstop::memory::MemoryBroker;
/// use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// broker.publish_now("orders", Message::new("\"o-1\""))?;
/// let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
///     .build(handler_fn(|_: String, _: Context| async { Ok::<_, HandlerError>(()) }));
///
/// let runner = Runner::new(broker.consume("orders", 16), stack)
///     .concurrency(16)
///     .shutdown_deadline(Duration::from_secs(5));
/// let shutdown = runner.shutdown_token();
/// let running = tokio::spawn(runner.run());
/// while broker.stats("orders").acked < 1 {
///     tokio::time::sleep(Duration::from_millis(1)).await;
/// }
/// shutdown.cancel();
/// let summary = running.await??;
/// assert_eq!((summary.received, summary.handled), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Runner<Src, Svc> {
    source: Src,
    service: Svc,
    concurrency: usize,
    deadline: Duration,
    shutdown: CancellationToken,
    readiness: Readiness,
    health: Health,
    labels: MetricLabels,
    breaker: Breaker,
    task_per_message: bool,
}

impl<Src, Svc> Runner<Src, Svc>
where
    Src: Source,
    Svc: Service<Delivery, Response = Settled, Error = AckError> + Send + 'static,
    Svc::Future: Send + 'static,
{
    /// A runner of `service` over `source`: concurrency 1, 30 s shutdown deadline.
    pub fn new(source: Src, service: Svc) -> Self {
        let health = Health::default();
        Runner {
            source,
            service,
            concurrency: 1,
            deadline: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            readiness: health.readiness().clone(),
            health,
            labels: MetricLabels::default(),
            breaker: Breaker::default(),
            task_per_message: false,
        }
    }

    /// Trips the kill switch by `config` (see [`breaker`](crate::breaker)).
    /// Without it the breaker never trips by itself, but
    /// [`Breaker::pause`] still works.
    #[must_use]
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Breaker::new(config);
        self
    }

    /// The runner's breaker: its state, and the manual
    /// [`pause`](Breaker::pause) / [`resume`](Breaker::resume) of a running runner.
    pub fn breaker(&self) -> Breaker {
        self.breaker.clone()
    }

    /// At most `n` messages in flight (for RabbitMQ, match the prefetch).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs each message on a tokio task of its own, for handlers that block
    /// or burn CPU between their awaits.
    ///
    /// By default the runner polls its in-flight messages itself, on its own
    /// task, from the same loop that waits for the source: no task is
    /// spawned per message, and a message's panic is caught for that
    /// message alone. That is the cheaper choice for handlers that mostly
    /// wait (on a database, a broker, an HTTP call). A handler that computes
    /// for long between awaits holds up the other messages of its runner
    /// then; with a task per message the runtime's worker threads run them
    /// side by side instead. The guarantees are the same either way.
    ///
    /// ```
    /// use backstop::memory::MemoryBroker;
    /// use backstop::{Context, HandlerError, Runner, StackBuilder, handler_fn};
    /// # use std::sync::Arc;
    ///
    /// let broker = MemoryBroker::new();
    /// let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
    ///     .build(handler_fn(|_v: serde_json::Value, _ctx: Context| async {
    ///         Ok::<_, HandlerError>(())
    ///     }));
    /// let runner = Runner::new(broker.consume("orders", 8), stack)
    ///     .concurrency(8)
    ///     .task_per_message();
    /// # drop(runner);
    /// ```
    #[must_use]
    pub fn task_per_message(mut self) -> Self {
        self.task_per_message = true;
        self
    }

    /// How long in-flight messages may finish after shutdown begins.
    #[must_use]
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Shuts down when `token` is cancelled. The runner cancels it too when
    /// it stops (so runners given one token stop together); handlers see a
    /// child of it, of this run's own, as their cancellation.
    #[must_use]
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Whether this runner is consuming (for a health endpoint); see [`Readiness`].
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// This runner's readiness and the liveness of its loops (for
    /// `/readyz` and `/healthz`); see [`Health`].
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Labels this runner's gauges (`backstop_ready`, `backstop_breaker_state`,
    /// `backstop_runner_halted`) with its consumer's `source` and `group`;
    /// see [`MetricLabels`]. Install the metrics recorder first.
    #[must_use]
    pub fn metric_labels(mut self, labels: MetricLabels) -> Self {
        self.labels = labels;
        self
    }

    /// The token that shuts this runner down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Also shuts down on SIGINT or SIGTERM.
    #[must_use]
    pub fn shutdown_on_signals(self) -> Self {
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        self
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
