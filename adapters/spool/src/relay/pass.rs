//! Where the relay is in its pass over the log, and what the end of a
//! pass leads to.

use std::collections::HashSet;

use backstop::RetryPolicy;
use tokio::time::Instant;

use crate::record::Unit;

/// Where the relay is in its pass over the log.
#[derive(Debug, Default)]
pub(super) struct Pass {
    /// The last `seq` read in this pass (0: the pass starts at the oldest record).
    pub(super) cursor: u64,
    /// The log's highest `seq` when the pass began.
    pub(super) high: Bound,
    /// Passes in a row that ended with units waiting (the backoff's exponent).
    stuck: u32,
    /// The last read came back full (`batch` records).
    pub(super) full: bool,
    /// When the waiting units are retried.
    retry_at: Option<Instant>,
}

/// The log's highest `seq` as a pass knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Bound {
    /// Not asked yet in this pass.
    #[default]
    NotAsked,
    /// Asked; the log could not tell.
    Unknown,
    /// The highest `seq` when it was asked.
    Known(u64),
}

impl From<Option<u64>> for Bound {
    fn from(high: Option<u64>) -> Self {
        high.map_or(Bound::Unknown, Bound::Known)
    }
}

/// What the end of a pass leads to.
pub(super) enum PassEnd {
    /// Waiting units were due: a new pass retries them from the oldest record.
    Retry,
    /// No unit waits: a new pass starts from the oldest record.
    Idle,
    /// Units wait until then; the pass goes on after the cursor meanwhile.
    Waiting(Instant),
}

impl Pass {
    /// Starts a new pass from the oldest record.
    pub(super) fn restart(&mut self) {
        self.cursor = 0;
        self.high = Bound::NotAsked;
        self.retry_at = None;
    }

    /// Ends the pass: see [`PassEnd`].
    pub(super) fn end(&mut self, blocked: &mut HashSet<Unit>, backoff: &RetryPolicy) -> PassEnd {
        if blocked.is_empty() {
            self.stuck = 0;
            self.restart();
            return PassEnd::Idle;
        }
        let now = Instant::now();
        let due = *self
            .retry_at
            .get_or_insert_with(|| now + backoff.delay(self.stuck.saturating_add(1)));
        if now >= due {
            self.stuck = self.stuck.saturating_add(1);
            blocked.clear();
            self.restart();
            PassEnd::Retry
        } else {
            PassEnd::Waiting(due)
        }
    }
}
