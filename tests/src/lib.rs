//! Shared helpers for the cross-crate suites.
//!
//! The fault suites (`tests/faults_*.rs`, `tests/bad_input.rs`) drive the
//! real `order-worker` binary ([`worker`], several at once: [`fleet`]), record executions in a
//! PostgreSQL ledger in a schema of their own ([`ledger`]), publish a mix of
//! orders ([`orders`]), read each worker's metrics while it runs ([`scrape`])
//! and print Jepsen-style counts ([`report`]).
//! `tests/dashboards.rs` reads the Grafana dashboard and the alert rules
//! ([`ops`]) and checks them against promtool and a worker's `/metrics`.

pub mod cluster;
pub mod fault;
pub mod fleet;
pub mod kafka_run;
pub mod ledger;
pub mod ops;
pub mod orders;
pub mod proxy;
pub mod report;
pub mod scrape;
pub mod worker;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The value of the environment variable `name` as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// A name no other run uses: `prefix`, this process id and the clock (lowercase, `[a-z0-9_]`).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Holds an exclusive file lock that every suite disturbing the same broker takes.
#[derive(Debug)]
pub struct OutageLock {
    _file: std::fs::File,
}

/// RabbitMQ's outage lock (the adapter's own outage tests take it too).
pub const RABBITMQ_OUTAGE_LOCK: &str = "/tmp/backstop-rabbitmq-outage.lock";
/// Kafka's outage lock.
pub const KAFKA_OUTAGE_LOCK: &str = "/tmp/backstop-kafka-outage.lock";

/// Takes the file lock at `path`, waiting for other holders.
pub async fn outage_lock(path: &'static str) -> std::io::Result<OutageLock> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.lock()?;
        Ok(OutageLock { _file: file })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Polls `check` every `every` until it returns `Some`, or `None` after `deadline`.
pub async fn poll<T, F, Fut>(deadline: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `program` with `args` (with `/usr/sbin` on the path) and returns its
/// output, or an error carrying its stderr when it fails.
pub async fn run_command(program: &str, args: &[&str]) -> Result<String, String> {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&program)
            .args(&args)
            .env(
                "PATH",
                format!(
                    "/usr/sbin:/usr/bin:/sbin:/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .map_err(|e| format!("{program} {args:?} did not run: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await
    .map_err(|e| e.to_string())?
}
