//! [`Settings`]: what a configuration may say about one consumer, each key
//! optional. A key that is set overrides the code's (or a derive
//! attribute's) value; a key left out keeps it
//! ([`StackBuilder::settings`](crate::stack::StackBuilder::settings), and the
//! `runner_with` constructor of `#[derive(Handler)]`).
//!
//! ```
//! use std::time::Duration;
//! use backstop::settings::Settings;
//!
//! let settings = Settings {
//!     max_attempts: Some(3),
//!     timeout: Some(Duration::from_secs(5)),
//!     ..Settings::default()
//! };
//! assert_eq!(settings.concurrency_or(16), 16);
//! ```

use std::time::Duration;

/// One consumer's overrides; `None` keeps the value below.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Messages in flight at once.
    pub concurrency: Option<usize>,
    /// Attempts per message before it is dead-lettered (at least 1).
    pub max_attempts: Option<u32>,
    /// Larger bodies are dead-lettered as `too_large`.
    pub max_payload_bytes: Option<usize>,
    /// Timeout of one handler run.
    pub timeout: Option<Duration>,
    /// The first retry backoff's upper bound.
    pub backoff_initial: Option<Duration>,
    /// No retry backoff is longer than this.
    pub backoff_max: Option<Duration>,
    /// Messages older than this, or past their `expires-at`, are not run
    /// (see [`expiry`](crate::expiry)).
    pub time_to_live: Option<crate::expiry::TimeToLive>,
}

impl Settings {
    /// The concurrency, else `default`.
    pub fn concurrency_or(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default).max(1)
    }
}
