//! [`Runner`]: drives a [`Source`] through a stack with bounded concurrency
//! and shuts down gracefully.
//!
//! Concurrency is tower's `ConcurrencyLimit`: a permit is taken before the
//! next delivery is fetched, so the runner never holds more than it runs.
//! On shutdown (a token, or SIGINT/SIGTERM): stop fetching, cancel the
//! handlers' tokens, let in-flight messages finish until the deadline, drop
//! what did not finish (each such delivery is nacked with requeue by its
//! drop), close the source and return a [`Summary`].

mod source;
mod summary;

pub use self::source::{Source, SourceError};
pub use self::summary::Summary;

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimit;
use tower::{Service, ServiceExt};

use crate::{AckError, Delivery, Settled};

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
}

/// Drives a source through a stack; see the [module docs](self).
#[derive(Debug)]
pub struct Runner<Src, Svc> {
    source: Src,
    service: Svc,
    concurrency: usize,
    deadline: Duration,
    shutdown: CancellationToken,
}

impl<Src, Svc> Runner<Src, Svc>
where
    Src: Source,
    Svc: Service<Delivery, Response = Settled, Error = AckError> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
{
    /// A runner of `service` over `source`: concurrency 1, 30 s shutdown deadline.
    pub fn new(source: Src, service: Svc) -> Self {
        Runner {
            source,
            service,
            concurrency: 1,
            deadline: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
        }
    }

    /// At most `n` messages in flight (for RabbitMQ, match the prefetch).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long in-flight messages may finish after shutdown begins.
    #[must_use]
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Shuts down when `token` is cancelled. The runner cancels it too when
    /// it stops; handlers see it as their cancellation.
    #[must_use]
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
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

    /// Runs until the source ends or shutdown; returns what happened.
    pub async fn run(mut self) -> Result<Summary, RunError> {
        let mut service = ConcurrencyLimit::new(self.service.clone(), self.concurrency);
        let mut tasks: JoinSet<Result<Settled, AckError>> = JoinSet::new();
        let mut summary = Summary::default();
        let mut failure = None;
        loop {
            while let Some(done) = tasks.try_join_next() {
                record(&mut summary, done);
            }
            let ready = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                ready = service.ready() => ready.is_ok(),
            };
            if !ready {
                break;
            }
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                next = self.source.next() => next,
            };
            match next {
                None => break,
                Some(Ok(delivery)) => {
                    summary.received += 1;
                    let delivery = delivery.with_cancellation(self.shutdown.clone());
                    tasks.spawn(service.call(delivery));
                }
                Some(Err(error)) if error.is_fatal() => {
                    failure = Some(error);
                    break;
                }
                Some(Err(error)) => tracing::warn!(%error, "source interrupted; it reconnects"),
            }
        }
        self.shutdown.cancel();
        let drained = tokio::time::timeout(self.deadline, async {
            while let Some(done) = tasks.join_next().await {
                record(&mut summary, done);
            }
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while let Some(done) = tasks.join_next().await {
                record(&mut summary, done);
            }
            tracing::warn!(
                abandoned = summary.abandoned,
                "shutdown deadline passed; unfinished messages are left for redelivery"
            );
        }
        self.source.close().await;
        match failure {
            Some(source) => Err(RunError::Source { source, summary }),
            None => Ok(summary),
        }
    }
}

fn record(summary: &mut Summary, done: Result<Result<Settled, AckError>, tokio::task::JoinError>) {
    match done {
        Ok(result) => {
            if let Err(error) = &result {
                tracing::warn!(%error, "settling a delivery failed; the broker redelivers it");
            }
            summary.record(&result);
        }
        Err(error) if error.is_cancelled() => summary.abandoned += 1,
        Err(error) => {
            tracing::error!(%error, "a message task panicked outside the handler; the delivery is redelivered");
            summary.ack_failed += 1;
        }
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
