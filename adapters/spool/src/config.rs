//! [`SpoolConfig`]: where the spool lives, how large it may grow, and what
//! a write does when it is full ([`WhenFull`]); [`RelayConfig`]: how the
//! relay drains it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop::RetryPolicy;

/// What a write to a full spool does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for the relay to make room, at most `timeout`; then fail with
    /// [`SpoolError::Full`](crate::SpoolError::Full). Back-pressure: the
    /// caller slows down to the pace at which the broker takes messages.
    Block {
        /// The longest a write waits for room.
        timeout: Duration,
    },
    /// Fail at once with [`SpoolError::Full`](crate::SpoolError::Full).
    Fail,
}

impl Default for WhenFull {
    /// `Block` for up to 30 s.
    fn default() -> Self {
        WhenFull::Block {
            timeout: Duration::from_secs(30),
        }
    }
}

/// The spool's file, its bounds and its full policy.
///
/// The spool is one SQLite database (WAL mode, `synchronous=FULL`) at
/// [`path`](SpoolConfig::path), with a lock file beside it
/// (`<path>.lock`) that one process at a time holds. Put it on a persistent
/// volume: a spool on a container's ephemeral disk is lost with the
/// container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The database file; its directory is created if missing.
    pub path: PathBuf,
    /// The `spool` label of the metrics (default: the file's stem).
    pub name: String,
    /// At most this many records (default 1,000,000; `None`: unbounded).
    pub max_records: Option<u64>,
    /// At most this many bytes of destination, payload, headers and key
    /// (default 1 GiB; `None`: unbounded). SQLite's own overhead comes on top.
    pub max_bytes: Option<u64>,
    /// What a write does when a bound is reached (default: block up to 30 s).
    pub when_full: WhenFull,
}

impl SpoolConfig {
    /// The defaults for a spool at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spool".to_owned());
        SpoolConfig {
            path,
            name,
            max_records: Some(1_000_000),
            max_bytes: Some(1 << 30),
            when_full: WhenFull::default(),
        }
    }

    /// Sets the metrics label.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the most records (`None`: unbounded).
    #[must_use]
    pub fn max_records(mut self, max: impl Into<Option<u64>>) -> Self {
        self.max_records = max.into();
        self
    }

    /// Sets the most bytes (`None`: unbounded).
    #[must_use]
    pub fn max_bytes(mut self, max: impl Into<Option<u64>>) -> Self {
        self.max_bytes = max.into();
        self
    }

    /// Sets the full policy.
    #[must_use]
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// The lock file held while the spool is open: `<path>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        lock_path(&self.path)
    }
}

/// How a [`Relay`](crate::Relay) drains its log: the batch it reads, how
/// often it looks when idle, and how it backs off; see [`Relay`](crate::Relay)
/// for what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Records read (and at most sent concurrently) per round (default 256).
    pub batch: usize,
    /// How often an idle relay looks at the spool even without a wake-up (default 1 s).
    pub idle_poll: Duration,
    /// The backoff between failed rounds: [`RetryPolicy::delay`] of the
    /// number of failed rounds in a row (default 100 ms … 5 s). Only its
    /// bounds are read: the relay never gives up.
    pub backoff: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 256,
            idle_poll: Duration::from_secs(1),
            backoff: RetryPolicy::default()
                .backoff(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

impl RelayConfig {
    /// Sets the batch size (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the backoff bounds between failed rounds.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = self.backoff.backoff(initial, max);
        self
    }

    /// Sets the idle poll interval.
    #[must_use]
    pub fn idle_poll(mut self, every: Duration) -> Self {
        self.idle_poll = every;
        self
    }
}

pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_the_spool_after_its_file() {
        let c = SpoolConfig::new("/var/lib/app/orders.spool");
        assert_eq!(c.name, "orders");
        assert_eq!(
            c.lock_path(),
            PathBuf::from("/var/lib/app/orders.spool.lock")
        );
        assert_eq!(c.max_records, Some(1_000_000));
        assert!(matches!(c.when_full, WhenFull::Block { .. }));
    }
}
