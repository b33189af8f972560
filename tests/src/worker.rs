//! The `order-worker` binary as a child process.
//!
//! # Which binary
//!
//! A test cannot name another package's binary with
//! `env!("CARGO_BIN_EXE_…")`, so [`binary`] finds it next to the running
//! test: `<target>/<profile>/deps/<test>` → `<target>/<profile>/order-worker`
//! (the same target directory and profile as the test build, whatever
//! `CARGO_TARGET_DIR` says). Once per test process it runs
//! `cargo build [--release] -p backstop-examples --bin order-worker` there, so
//! the binary is never stale even under `cargo test -p backstop-tests` alone;
//! after `cargo test --workspace` (which builds the example binaries) that
//! build is a no-op of about a second. Set `BACKSTOP_ORDER_WORKER` to a path
//! to skip the build and use that binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of an up-to-date `order-worker` binary (built on first use).
///
/// # Panics
///
/// When the binary cannot be located or built: the suites cannot run then.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(path) = std::env::var("BACKSTOP_ORDER_WORKER") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test knows its own path");
        // <target>/<profile>/deps/<test-binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory has a parent");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "backstop-examples", "--bin"])
            .arg("order-worker")
            .arg("--manifest-path")
            .arg(manifest)
            .env("CARGO_TARGET_DIR", target_dir);
        if release {
            build.arg("--release");
        }
        let started = Instant::now();
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building order-worker failed: {status}");
        eprintln!("order-worker built/checked in {:?}", started.elapsed());
        let path = profile_dir.join("order-worker");
        assert!(path.exists(), "{} does not exist", path.display());
        path
    })
}

/// A running `order-worker`; its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    log: PathBuf,
    metrics: std::net::SocketAddr,
}

impl Worker {
    /// Starts the worker with `args` and `--metrics-addr` on a free port,
    /// appending its output to `log`; its duplicate count is watched
    /// ([`crate::scrape`]).
    pub fn spawn(args: &[String], log: &Path) -> std::io::Result<Worker> {
        let metrics = crate::scrape::free_addr()?;
        let mut command = Command::new(binary());
        command
            .args(args)
            .arg("--metrics-addr")
            .arg(metrics.to_string());
        Worker::start(command, metrics, log)
    }

    /// Starts the worker configured by `args` (e.g. `--config FILE`) and the
    /// environment variables `env` only: the metrics address (a free port)
    /// too comes from the environment (`BACKSTOP_TELEMETRY__METRICS_ADDR`).
    pub fn spawn_configured(
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<Worker> {
        let metrics = crate::scrape::free_addr()?;
        let mut command = Command::new(binary());
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("BACKSTOP_TELEMETRY__METRICS_ADDR", metrics.to_string());
        Worker::start(command, metrics, log)
    }

    fn start(
        mut command: Command,
        metrics: std::net::SocketAddr,
        log: &Path,
    ) -> std::io::Result<Worker> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = command
            .env(
                "RUST_LOG",
                // Warnings, and the Kafka consumer's rebalances (a few lines each).
                std::env::var("BACKSTOP_WORKER_LOG")
                    .unwrap_or_else(|_| "warn,backstop_kafka::poller=info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        crate::scrape::watch(log, child.id(), metrics);
        Ok(Worker {
            child,
            log: log.to_owned(),
            metrics,
        })
    }

    /// Where its Prometheus metrics are served.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.metrics
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// Sends SIGTERM and waits up to `deadline` for it to exit; `None` if it did not.
    pub async fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let pid = self.pid().to_string();
        crate::run_command("kill", &["-TERM", &pid]).await.ok()?;
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Its resident set size in KiB (`VmRSS` from `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.kill9();
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A log file path for `name` in the system's temporary directory.
pub fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}.log"))
}
