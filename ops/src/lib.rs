//! The operations server of a backstop worker: one HTTP listener per
//! process, serving every runner of it.
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | the Prometheus text page of every metric the process records |
//! | `/healthz` | liveness: 200 unless a loop a runner depends on (its driver loop, a Kafka consumer's poll thread) has not turned for [`stuck_after`](Operations::stuck_after) (default 60 s), then 503 naming it |
//! | `/readyz` | readiness: 200 while every runner is ready (connected, consuming or joined its group, not paused by its breaker, not halted), else 503 with each runner's reason |
//! | anything else | 404 |
//!
//! Liveness never fails for an idle queue, a broker or store outage, or a
//! paused runner: a liveness probe that fails on those restarts healthy
//! pods. Only a loop that stopped turning (a handler blocking the driver's
//! thread, a dead poll thread) fails it. Readiness is what an outage
//! flips: a Kubernetes readiness probe takes the pod out of rotation, and
//! the `backstop_ready` gauge shows it on the dashboard.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backstop::{Runner, StackBuilder, handler_fn, memory::MemoryBroker};
//! use backstop_ops::Operations;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The recorder first: metrics handles are registered with it.
//! let ops = Operations::with_prometheus()?;
//! let broker = MemoryBroker::new();
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .build(handler_fn(|_order: String, _| async { Ok::<_, backstop::HandlerError>(()) }));
//! let runner = Runner::new(broker.consume("orders", 8), stack).concurrency(8);
//! ops.watch("orders", runner.health());
//! let server = ops.bind("127.0.0.1:9464".parse()?).await?;
//! println!("operations on http://{}", server.local_addr());
//! runner.run().await?;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backstop::runner::Health;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The buckets of every `*_seconds` histogram: 1 ms to 5 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Why the operations server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The Prometheus recorder could not be installed (another recorder is
    /// installed already: install one recorder per process).
    #[error(
        "installing the Prometheus recorder failed (is another metrics recorder installed?): {0}"
    )]
    Recorder(#[from] BuildError),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for /metrics, /healthz and /readyz: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What the operations server serves; see the [crate docs](crate). Cheap
/// to clone: every clone serves the same runners, so runners started after
/// the server can still be [watched](Self::watch).
#[derive(Clone, Debug)]
pub struct Operations {
    runners: Arc<Mutex<Vec<(String, Health)>>>,
    metrics: Option<PrometheusHandle>,
    stuck_after: Duration,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            runners: Arc::default(),
            metrics: None,
            stuck_after: Duration::from_secs(60),
        }
    }
}

impl Operations {
    /// Health endpoints only; `/metrics` answers 404.
    pub fn new() -> Self {
        Operations::default()
    }

    /// Installs a Prometheus recorder as the process's metrics recorder
    /// and serves it on `/metrics`. Call it before building stacks and
    /// runners: their metric handles are registered with the recorder
    /// installed when they are made.
    pub fn with_prometheus() -> Result<Self, OpsError> {
        // Durations as histograms (buckets), so dashboards can aggregate
        // quantiles across workers; the exporter's default is a summary.
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
            .install_recorder()?;
        backstop::metrics::describe();
        Ok(Self::with_metrics(handle))
    }

    /// Serves `handle` (a recorder the caller installed) on `/metrics`.
    pub fn with_metrics(handle: PrometheusHandle) -> Self {
        Operations {
            metrics: Some(handle),
            ..Operations::default()
        }
    }

    /// `/healthz` fails once a loop has not turned for `after` (default
    /// 60 s; idle loops turn every second).
    #[must_use]
    pub fn stuck_after(mut self, after: Duration) -> Self {
        self.stuck_after = after;
        self
    }

    /// Serves the health of the runner called `name` from now on.
    pub fn watch(&self, name: impl Into<String>, health: Health) {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), health));
    }

    /// The routes, for a server of the caller's own.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Listens on `addr` and serves in the background until
    /// [`Server::shutdown`] (or the server is dropped).
    pub async fn bind(&self, addr: SocketAddr) -> Result<Server, OpsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| OpsError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| OpsError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let router = self.router();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the operations server stopped");
            }
        });
        if let Some(handle) = self.metrics.clone() {
            // Histograms need their buckets drained now and then.
            let until = stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = until.cancelled() => break,
                        _ = every.tick() => handle.run_upkeep(),
                    }
                }
            });
        }
        tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
        Ok(Server {
            addr: local,
            stop,
            task: Some(task),
        })
    }

    fn runners(&self) -> Vec<(String, Health)> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running operations server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// The address it listens on (the port, when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for open requests to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn metrics(State(ops): State<Operations>) -> Response {
    match &ops.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder is served here\n",
        )
            .into_response(),
    }
}

async fn healthz(State(ops): State<Operations>) -> Response {
    text(liveness(&ops.runners(), ops.stuck_after))
}

async fn readyz(State(ops): State<Operations>) -> Response {
    text(readiness(&ops.runners()))
}

fn text((ok, body): (bool, String)) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Whether every loop turns, and one line per runner.
fn liveness(runners: &[(String, Health)], after: Duration) -> (bool, String) {
    let mut ok = true;
    let mut body = String::new();
    for (name, health) in runners {
        match health.stuck(after) {
            None => body.push_str(&format!("{name}: live\n")),
            Some((what, silent)) => {
                ok = false;
                body.push_str(&format!(
                    "{name}: stuck: {what} has not turned for {} s\n",
                    silent.as_secs()
                ));
            }
        }
    }
    if runners.is_empty() {
        body.push_str("live (no runner yet)\n");
    }
    (ok, body)
}

/// Whether every runner is ready (and there is one), and one line per runner.
fn readiness(runners: &[(String, Health)]) -> (bool, String) {
    let mut ok = !runners.is_empty();
    let mut body = String::new();
    for (name, health) in runners {
        match health.readiness().get() {
            Ok(()) => body.push_str(&format!("{name}: ready\n")),
            Err(why) => {
                ok = false;
                body.push_str(&format!("{name}: not ready: {why}\n"));
            }
        }
    }
    if runners.is_empty() {
        body.push_str("not ready: no runner yet\n");
    }
    (ok, body)
}

#[cfg(test)]
mod tests {
    use backstop::runner::Liveness;

    use super::*;

    #[test]
    fn liveness_names_the_silent_loop_and_ignores_ended_ones() {
        let health = Health::default();
        let quick = Liveness::new("driver");
        let ended = Liveness::new("poll thread");
        health.watch(quick.clone());
        health.watch(ended.clone());
        let runners = vec![("orders".to_owned(), health)];
        std::thread::sleep(Duration::from_millis(30));
        ended.end();
        let (ok, body) = liveness(&runners, Duration::from_millis(10));
        assert!(!ok);
        assert!(
            body.starts_with("orders: stuck: driver has not turned for"),
            "{body}"
        );
        quick.beat();
        assert_eq!(
            liveness(&runners, Duration::from_millis(10)),
            (true, "orders: live\n".to_owned())
        );
    }

    #[test]
    fn readiness_needs_a_runner_and_every_runner_ready() {
        assert!(!readiness(&[]).0);
        let health = Health::default();
        let (ok, body) = readiness(&[("orders".to_owned(), health)]);
        assert!(!ok);
        assert_eq!(body, "orders: not ready: starting\n");
    }
}
