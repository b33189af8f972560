//! Counts read from each worker's Prometheus endpoint while it runs.
//!
//! A worker killed with SIGKILL prints no summary, so what it suppressed as
//! duplicates would be lost with it. Every worker the suites start serves
//! its metrics (`--metrics-addr`); a task reads
//! `backstop_messages_total{outcome="duplicate"}` every [`EVERY`] until the
//! process is gone and keeps the last value per process, grouped by the
//! run's log file. [`duplicates_suppressed`] sums them: a lower bound, short
//! of at most the last [`EVERY`] of each killed worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use backstop::metrics::MESSAGES_TOTAL;
use backstop::outcome::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often a running worker's metrics are read.
pub const EVERY: Duration = Duration::from_millis(200);

type Runs = HashMap<PathBuf, HashMap<u32, u64>>;

fn runs() -> &'static Mutex<Runs> {
    static RUNS: OnceLock<Mutex<Runs>> = OnceLock::new();
    RUNS.get_or_init(Mutex::default)
}

/// A free port on 127.0.0.1 for a worker's metrics endpoint.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Starts reading the metrics of the worker `pid` of the run logging to
/// `log` at `addr`, until the process is gone. Needs a Tokio runtime; does
/// nothing outside one.
pub fn watch(log: &Path, pid: u32, addr: SocketAddr) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let log = log.to_owned();
    runtime.spawn(async move {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        while proc.exists() {
            if let Some(n) = read_duplicates(addr).await {
                let mut runs = runs().lock().unwrap_or_else(|e| e.into_inner());
                let seen = runs.entry(log.clone()).or_default().entry(pid).or_default();
                *seen = (*seen).max(n);
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

/// Deliveries acked as duplicates by every worker of the run logging to
/// `log`, as last read from each (see the [module docs](self)).
pub fn duplicates_suppressed(log: &Path) -> u64 {
    let runs = runs().lock().unwrap_or_else(|e| e.into_inner());
    runs.get(log).map_or(0, |workers| workers.values().sum())
}

async fn read_duplicates(addr: SocketAddr) -> Option<u64> {
    messages(addr, Outcome::Duplicate).await
}

/// One `GET /metrics` from `addr` (at most 1 s); the sum of its
/// `backstop_messages_total` samples for `outcome`, or none when the
/// endpoint did not answer.
pub async fn messages(addr: SocketAddr, outcome: Outcome) -> Option<u64> {
    Some(parse_messages(&metrics(addr).await?, outcome))
}

/// One `GET /metrics` from `addr` (at most 1 s): the response, headers
/// and the Prometheus text, or none when the endpoint did not answer.
pub async fn metrics(addr: SocketAddr) -> Option<String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()
        .flatten()
}

/// One `GET path` from the worker's operations server at `addr` (at most
/// 2 s): the status code and the body, or none when it did not answer.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

/// Sums `backstop_messages_total{…outcome="<outcome>"…}` samples in a
/// Prometheus text exposition.
fn parse_messages(text: &str, outcome: Outcome) -> u64 {
    let label = format!("outcome=\"{}\"", outcome.label());
    text.lines()
        .filter(|l| {
            l.strip_prefix(MESSAGES_TOTAL)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(&label))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use backstop::outcome::Outcome;

    use super::parse_messages;

    #[test]
    fn sums_the_samples_of_one_outcome_only() {
        let text = "# TYPE backstop_messages_total counter\n\
            backstop_messages_total{outcome=\"handled\"} 120\n\
            backstop_messages_total{outcome=\"duplicate\",source=\"a\"} 7\n\
            backstop_messages_total{source=\"b\",outcome=\"duplicate\"} 5\n\
            backstop_messages_total_other{outcome=\"duplicate\"} 1000\n";
        assert_eq!(parse_messages(text, Outcome::Duplicate), 12);
        assert_eq!(parse_messages(text, Outcome::Handled), 120);
    }
}
