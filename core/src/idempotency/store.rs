use std::time::Duration;

use super::Key;
use crate::StoreError;

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lease now; `failed_runs` failed runs are on record.
    Acquired {
        /// Failed runs remembered for the key (survives restarts).
        failed_runs: u32,
    },
    /// The key completed before: the message is a duplicate.
    Completed,
    /// The key was dead-lettered and this is not a newer redrive: a duplicate.
    DeadLettered,
    /// Another live owner holds the lease for about this long.
    Busy {
        /// Time left on the other owner's lease.
        remaining: Duration,
    },
}

/// The idempotency store: a lease state machine per key.
///
/// ```text
/// absent ──claim──▶ in_progress{owner, lease_until} ──complete──▶ completed
///                        │   ▲ renew                 ──dead_letter──▶ dead_lettered
///                        │   └─ takeover after lease expiry
///                        └──release(failed_runs)──▶ idle{failed_runs} ──claim──▶ …
/// ```
///
/// `replay` is the redrive number of the copy (`x-backstop-replayed`): a
/// `dead_lettered` key refuses copies of its own replay number or lower, and
/// admits a higher one once (a redrive starts a new attempt count).
/// Operations of an owner that lost its lease return `Ok(false)`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Tries to take the lease on `key` for `owner`.
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError>;

    /// Extends `owner`'s lease; `false` if the lease was lost.
    async fn renew(&self, key: &Key, owner: &str, lease: Duration) -> Result<bool, StoreError>;

    /// Marks the key completed; `false` if `owner` no longer held the lease.
    async fn complete(&self, key: &Key, owner: &str) -> Result<bool, StoreError>;

    /// Marks the key dead-lettered; `false` if `owner` no longer held the lease.
    async fn dead_letter(&self, key: &Key, owner: &str) -> Result<bool, StoreError>;

    /// Gives the lease up. `Some(n)` records `n` failed runs; `None` keeps the count.
    async fn release(
        &self,
        key: &Key,
        owner: &str,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError>;
}
