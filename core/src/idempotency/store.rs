use std::fmt;
use std::time::Duration;

use futures::future::join_all;

use super::Key;
use crate::error::{BoxError, Failure};

/// A fencing token: the number of one lease on one key.
///
/// Every claim that takes a lease gets a larger token than any earlier lease
/// on the key (stores derive it from a counter or a microsecond clock that
/// only grows), and every renewal, completion, dead letter and release names
/// the token it holds. A store refuses the operation unless the key is still
/// in progress under exactly that token, so a run whose lease expired and
/// was taken over can never settle the key its successor now holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub u64);

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The most bytes of error text a pending letter keeps
/// ([`Store::release_with_letter`]): as much as the letter's `x-backstop-error`
/// header carries.
pub const MAX_LETTER_TEXT: usize = crate::wire::MAX_ERROR_LEN;

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lease now, under `fence`.
    Acquired {
        /// The lease's fencing token: name it in every later operation.
        fence: Fence,
        /// Failed runs remembered for the key (survives restarts). A run
        /// whose lease was taken over after it expired counts as failed.
        failed_runs: u32,
        /// True when this claim took over a lease that expired without being
        /// released: the previous run never ended (the process crashed, was
        /// killed, or hung past its lease). Such a message is a suspect.
        crashed: bool,
    },
    /// The caller holds the lease now, under `fence`, but the key's run
    /// already failed for good and its dead letter is still to be written
    /// (recorded by [`Store::release_with_letter`]): write only that letter,
    /// carrying `letter`, and do not run the handler again.
    LetterPending {
        /// The lease's fencing token: name it in every later operation.
        fence: Fence,
        /// Failed runs remembered for the key.
        failed_runs: u32,
        /// The failure the letter carries: its kind, error text, attempts
        /// and failure times, as recorded.
        letter: Failure,
    },
    /// The key completed before: the message is a duplicate.
    Completed,
    /// The key was dead-lettered and this is not the next redrive: a duplicate.
    DeadLettered,
    /// Another live owner holds the lease for about this long.
    Busy {
        /// Time left on the other owner's lease.
        remaining: Duration,
    },
}

impl Claim {
    /// The fencing token if the lease was acquired.
    pub fn fence(&self) -> Option<Fence> {
        match self {
            Claim::Acquired { fence, .. } | Claim::LetterPending { fence, .. } => Some(*fence),
            _ => None,
        }
    }
}

/// One claim of a batch: [`Store::claim_many`].
#[derive(Clone, Copy, Debug)]
pub struct ClaimOf<'a> {
    /// The key to claim.
    pub key: &'a Key,
    /// Who claims it (kept for diagnostics; the fence decides ownership).
    pub owner: &'a str,
    /// The copy's redrive number (`x-backstop-replayed`).
    pub replay: u32,
}

/// A held lease: a key and the fencing token it is held under.
#[derive(Clone, Copy, Debug)]
pub struct Held<'a> {
    /// The key.
    pub key: &'a Key,
    /// The lease's token.
    pub fence: Fence,
}

/// The idempotency store: a lease state machine per key.
///
/// ```text
/// absent ──claim──▶ in_progress{fence, lease_until} ──complete──▶ completed
///                        │   ▲ renew                   ──dead_letter──▶ dead_lettered
///                        │   └─ takeover after lease expiry (a new fence; counts a failed run)
///                        └──release(failed_runs)──▶ idle{failed_runs} ──claim──▶ …
/// ```
///
/// Fencing: every lease has a [`Fence`] larger than the key's earlier ones;
/// renew, complete, dead-letter and release are refused (`Ok(false)`, or a
/// no-op for release) unless the key is in progress under that very token.
///
/// Crash counting: taking over an expired lease adds one to the failed runs
/// and reports `crashed: true` (its owner never released it, so its run
/// ended without a result). A released lease (shutdown, revoke, a dropped
/// future, a requeue) is never counted this way.
///
/// Redrives: `replay` is the copy's redrive number (`x-backstop-replayed`).
/// The store records the replay number of the run that dead-lettered a key;
/// a `dead_lettered` key admits only the next one (`recorded + 1`, what the
/// redrive tool writes on the letter it republishes), once, with a new
/// attempt count. Any other number, higher ones included, is a duplicate, so
/// a producer cannot re-run a dead-lettered message by writing a large
/// header. For a key the store holds, `failed_runs` is the attempt count to
/// trust over any header.
///
/// Pending letters: when the DLQ write of a key's final failure is not
/// confirmed, [`release_with_letter`](Store::release_with_letter) releases the lease and
/// records the failure (kind, error text of at most
/// [`MAX_LETTER_TEXT`] bytes, attempts, failure times). Until the key is
/// settled, every claim that takes its lease reports
/// [`Claim::LetterPending`], on any worker and after restarts, so the
/// redelivery writes only that letter. [`mark_dead_lettered`](Store::mark_dead_lettered)
/// and [`complete`](Store::complete) forget it, and so does a newer redrive
/// (a larger `replay`) or the key's expiry. Its default implementation keeps
/// no letter (it releases, recording the attempts, and returns `false`): the
/// dead-letter layer then falls back to its in-process table.
///
/// Batches: `claim_many`, `renew_many` and `complete_many` return one result
/// per item, in order, and one item's failure never fails the others. Their
/// default implementations run the single-key operations concurrently, so
/// a store only needs the five single-key methods; shared stores override
/// them with one round trip.
///
/// Called through the trait, on the in-process [`MemoryStore`](super::MemoryStore):
///
/// ```
/// use std::time::Duration;
///
/// use backstop::idempotency::{Claim, Key, MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), backstop::error::StoreError> {
/// let store = MemoryStore::default();
/// let key = Key::new("order-17");
/// let lease = Duration::from_secs(30);
///
/// let Claim::Acquired { fence, .. } = store.claim(&key, "worker-a", lease, 0).await? else {
///     panic!("a new key is free");
/// };
/// // Another worker finds the lease held, and cannot settle it.
/// assert!(matches!(store.claim(&key, "worker-b", lease, 0).await?, Claim::Busy { .. }));
/// assert!(store.complete(&key, fence).await?);
/// // Once completed, every later delivery is a duplicate.
/// assert!(matches!(store.claim(&key, "worker-b", lease, 0).await?, Claim::Completed));
/// # Ok(())
/// # }
/// ```
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

    /// [`claim`](Store::claim) answered without waiting, by a store that
    /// needs no I/O for it (an in-process store such as the
    /// [`MemoryStore`](super::MemoryStore)); `None`, the default, means
    /// "call `claim`". The idempotency layer asks this first, so such a
    /// store's claim costs no boxed future. `Some` must be exactly what
    /// `claim` would have answered, with the same effect.
    fn claim_now(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Option<Result<Claim, StoreError>> {
        let _ = (key, owner, lease, replay);
        None
    }

    /// Extends the lease `fence` on `key`; `false` if it was lost.
    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError>;

    /// Marks the key completed; `false` if the lease `fence` is no longer held.
    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError>;

    /// [`complete`](Store::complete) answered without waiting; `None`, the
    /// default, means "call `complete`" (see [`claim_now`](Store::claim_now)).
    fn complete_now(&self, key: &Key, fence: Fence) -> Option<Result<bool, StoreError>> {
        let _ = (key, fence);
        None
    }

    /// Marks the key dead-lettered; `false` if the lease `fence` is no longer held.
    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError>;

    /// Gives the lease `fence` up. `Some(n)` records `n` failed runs; `None`
    /// keeps the count. A lease no longer held is left alone.
    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError>;

    /// Gives the lease `fence` up, recording `letter.attempts` failed runs
    /// and that the key's dead letter, carrying `letter`, is still to be
    /// written: later claims report [`Claim::LetterPending`] until the key
    /// is dead-lettered or completed. `true` if recorded; `false` if the
    /// lease is no longer held (nothing changes), or if the store keeps no
    /// pending letters (the default: it only releases). `letter.message`
    /// holds at most [`MAX_LETTER_TEXT`] bytes.
    async fn release_with_letter(
        &self,
        key: &Key,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        self.release(key, fence, Some(letter.attempts))
            .await
            .map(|()| false)
    }

    /// The key as this store keeps it (a wrapper such as
    /// [`Namespaced`](super::Namespaced) applies its namespace); the bare
    /// key by default.
    fn storage_key(&self, key: &Key) -> Key {
        key.clone()
    }

    /// True for a store behind a network round trip (Redis, PostgreSQL):
    /// the stack then gathers its concurrent messages' claims, completions
    /// and renewals into batches ([`Batched`](super::Batched), see
    /// [`Config::batch`](super::Config#structfield.batch)). False by
    /// default: an in-process store (the [`MemoryStore`](super::MemoryStore))
    /// answers at once and gains nothing from it. Wrappers answer for the
    /// store they wrap.
    fn remote(&self) -> bool {
        false
    }

    /// False for a store that keeps no owner name with a claim (the
    /// [`MemoryStore`](super::MemoryStore): the fence is what it checks):
    /// the stack then passes an empty one instead of writing a name for
    /// each claim. True by default. Wrappers answer for the store they wrap.
    fn keeps_owner(&self) -> bool {
        true
    }

    /// The key layout the store is in: shared stores check it on start
    /// against the user's [`KeyLayout`](super::KeyLayout) and read it from
    /// their layout marker; the idempotency layer asks before every claim
    /// (keep it cheap). [`Layout::Keyspaced`](super::Layout::Keyspaced) by
    /// default: a store that starts empty with its worker (the
    /// [`MemoryStore`](super::MemoryStore)) holds nothing of an older layout.
    async fn layout(&self) -> Result<super::Layout, StoreError> {
        Ok(super::Layout::Keyspaced)
    }

    /// Claims many keys with one lease duration; one result per item, in
    /// order. A key twice in one batch is claimed once (which item wins is
    /// not specified); the other finds it held.
    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        join_all(
            claims
                .iter()
                .map(|c| self.claim(c.key, c.owner, lease, c.replay)),
        )
        .await
    }

    /// Renews many leases; one result per item, in order.
    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        join_all(held.iter().map(|h| self.renew(h.key, h.fence, lease))).await
    }

    /// Completes many keys; one result per item, in order.
    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        join_all(held.iter().map(|h| self.complete(h.key, h.fence))).await
    }
}

/// A failure of the idempotency store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's backend did not answer or failed.
    #[error("store backend failed: {0}")]
    Backend(#[source] BoxError),
    /// The store is full of live leases and cannot take a new key.
    #[error("store is full ({capacity} keys in progress)")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The store's key layout does not fit the worker's choice (see
    /// [`KeyLayout`](crate::idempotency::KeyLayout)).
    #[error(transparent)]
    Layout(#[from] super::LayoutError),
}
