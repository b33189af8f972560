//! The store contract: one suite of scenarios every [`Store`] must pass, so
//! "deduplicates on Redis" and "deduplicates on PostgreSQL" mean the same
//! thing as on the [`MemoryStore`](super::MemoryStore).
//!
//! A backend implements [`Backend`] (a new store instance on the same data,
//! its TTL and lease) and runs every scenario with [`run_all`], or one test
//! per scenario with [`store_contract_tests!`](crate::store_contract_tests).
//! The scenarios use real time (the lease and TTL of the backend, 300 ms and
//! 1 s by default), since a server's clock cannot be paused. Every scenario
//! works on keys of its own (`contract:<scenario>:<random>`), so scenarios
//! may run in parallel on one backend, and again on a backend that keeps
//! data between runs.
//!
//! ```text
//! // tests/contract.rs of a store crate
//! backstop::store_contract_tests!(MyBackend::connect().await);
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::{Claim, Key, MAX_KEY_LEN, Store};
use crate::{BoxError, StoreError};

/// The lease the scenarios take unless the backend says otherwise.
pub const LEASE: Duration = Duration::from_millis(300);

/// The TTL of finished keys a backend should give its instances for the suite.
pub const TTL: Duration = Duration::from_secs(1);

/// What a store implementation provides to run the contract.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A new store instance on the same backend and namespace: it must see
    /// every key the other instances wrote, as a restarted worker would.
    async fn instance(&self) -> Result<Arc<dyn Store>, BoxError>;

    /// How long the instances keep completed keys (the TTL scenario waits it out).
    fn ttl(&self) -> Duration {
        TTL
    }

    /// The lease the scenarios take.
    fn lease(&self) -> Duration {
        LEASE
    }
}

/// A [`Backend`] whose every "new instance" is one shared store: for
/// in-process stores such as [`MemoryStore`](super::MemoryStore), whose data
/// lives only as long as the instance.
#[derive(Clone)]
pub struct SameInstance {
    store: Arc<dyn Store>,
    ttl: Duration,
}

impl SameInstance {
    /// A backend of `store`, which keeps finished keys for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        SameInstance { store, ttl }
    }
}

impl std::fmt::Debug for SameInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SameInstance")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Backend for SameInstance {
    async fn instance(&self) -> Result<Arc<dyn Store>, BoxError> {
        Ok(Arc::clone(&self.store))
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A scenario the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The store answered, but not as the contract says.
    #[error("{scenario}: {what}")]
    Violated {
        /// The scenario's name.
        scenario: &'static str,
        /// What was expected and what came.
        what: String,
    },
    /// A store operation failed.
    #[error("{scenario}: store operation failed: {source}")]
    Store {
        /// The scenario's name.
        scenario: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The backend could not make a store instance.
    #[error("{scenario}: the backend could not create a store instance: {source}")]
    Instance {
        /// The scenario's name.
        scenario: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

/// Generates one `#[tokio::test]` per contract scenario for a backend expression.
///
/// The expression is evaluated inside each async test, so it may `.await`.
#[macro_export]
macro_rules! store_contract_tests {
    ($backend:expr) => {
        $crate::store_contract_tests!(@each $backend;
            one_winner_among_concurrent_claims, completed_key_is_done,
            dead_lettered_key_admits_each_replay_once, released_key_keeps_its_attempts,
            renewed_lease_is_not_taken_over, expired_lease_is_taken_over_and_late_owner_refused,
            non_owner_cannot_settle, attempts_survive_a_new_instance,
            completed_keys_expire_after_ttl, long_and_odd_keys_work);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend;
                if let Err(error) = $crate::idempotency::contract::$name(&backend).await {
                    panic!("{error}");
                }
            }
        )*
    };
}

/// Runs every scenario in turn; stops at the first violation.
pub async fn run_all(backend: &dyn Backend) -> Result<(), ContractError> {
    one_winner_among_concurrent_claims(backend).await?;
    completed_key_is_done(backend).await?;
    dead_lettered_key_admits_each_replay_once(backend).await?;
    released_key_keeps_its_attempts(backend).await?;
    renewed_lease_is_not_taken_over(backend).await?;
    expired_lease_is_taken_over_and_late_owner_refused(backend).await?;
    non_owner_cannot_settle(backend).await?;
    attempts_survive_a_new_instance(backend).await?;
    completed_keys_expire_after_ttl(backend).await?;
    long_and_odd_keys_work(backend).await
}

/// One scenario's run: its name, its keys, its checks.
struct Run<'a> {
    scenario: &'static str,
    backend: &'a dyn Backend,
    nonce: String,
}

impl<'a> Run<'a> {
    fn new(scenario: &'static str, backend: &'a dyn Backend) -> Self {
        Run {
            scenario,
            backend,
            nonce: crate::message::new_message_id(),
        }
    }

    fn key(&self, name: &str) -> Key {
        Key::new(&format!("contract:{}:{}:{name}", self.scenario, self.nonce))
    }

    async fn instance(&self) -> Result<Arc<dyn Store>, ContractError> {
        self.backend
            .instance()
            .await
            .map_err(|source| ContractError::Instance {
                scenario: self.scenario,
                source,
            })
    }

    fn ok<T>(&self, result: Result<T, StoreError>) -> Result<T, ContractError> {
        result.map_err(|source| ContractError::Store {
            scenario: self.scenario,
            source,
        })
    }

    fn eq<T: PartialEq + Debug>(&self, got: T, want: T, what: &str) -> Result<(), ContractError> {
        if got == want {
            Ok(())
        } else {
            Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!("{what}: expected {want:?}, got {got:?}"),
            })
        }
    }

    fn busy(&self, got: Claim, what: &str) -> Result<(), ContractError> {
        self.busy_within(got, self.backend.lease(), what)
    }

    fn busy_within(&self, got: Claim, lease: Duration, what: &str) -> Result<(), ContractError> {
        match got {
            Claim::Busy { remaining } if remaining <= lease => Ok(()),
            other => Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!(
                    "{what}: expected Busy with at most {lease:?} remaining, got {other:?}"
                ),
            }),
        }
    }
}

const fn acquired(failed_runs: u32) -> Claim {
    Claim::Acquired { failed_runs }
}

/// Of 32 concurrent claims of one key (on several instances), exactly one wins.
///
/// The lease is long here (a minute): the scenario is about atomicity, and
/// a slow backend (new connections, a loaded machine) must not see the
/// winner's lease expire and be legitimately taken over mid-race.
pub async fn one_winner_among_concurrent_claims(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("one_winner_among_concurrent_claims", backend);
    let lease = Duration::from_secs(60);
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(run.instance().await?);
    }
    let key = run.key("race");
    let owners: Vec<String> = (0..32).map(|i| format!("owner-{i}")).collect();
    let claims = join_all(
        owners
            .iter()
            .enumerate()
            .map(|(i, owner)| stores[i % stores.len()].claim(&key, owner, lease, 0)),
    )
    .await;
    let mut winners = Vec::new();
    for (owner, claim) in owners.iter().zip(claims) {
        match run.ok(claim)? {
            Claim::Acquired { failed_runs } => {
                run.eq(failed_runs, 0, "the winner of a new key")?;
                winners.push(owner.clone());
            }
            other => run.busy_within(other, lease, "a losing claim")?,
        }
    }
    run.eq(winners.len(), 1, "winners among 32 concurrent claims")?;
    run.eq(
        run.ok(stores[1].complete(&key, &winners[0]).await)?,
        true,
        "the winner completes",
    )?;
    run.eq(
        run.ok(stores[2].claim(&key, "late", lease, 0).await)?,
        Claim::Completed,
        "a claim after completion",
    )
}

/// A completed key is reported done, to every instance and every replay number.
pub async fn completed_key_is_done(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("completed_key_is_done", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    run.eq(
        run.ok(store.claim(&key, "a", lease, 0).await)?,
        acquired(0),
        "first claim",
    )?;
    run.eq(
        run.ok(store.complete(&key, "a").await)?,
        true,
        "owner completes",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::Completed,
        "duplicate",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 5).await)?,
        Claim::Completed,
        "a redriven copy of a completed key",
    )?;
    run.eq(
        run.ok(store.renew(&key, "a", lease).await)?,
        false,
        "renewing a completed key",
    )?;
    let other = run.instance().await?;
    run.eq(
        run.ok(other.claim(&key, "c", lease, 0).await)?,
        Claim::Completed,
        "duplicate on another instance",
    )
}

/// A dead-lettered key skips the original's duplicates but admits a redriven
/// copy once per replay number, with a new attempt count.
pub async fn dead_lettered_key_admits_each_replay_once(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("dead_lettered_key_admits_each_replay_once", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    run.ok(store.claim(&key, "a", lease, 0).await)?;
    run.ok(store.release(&key, "a", Some(4)).await)?;
    run.eq(
        run.ok(store.claim(&key, "a", lease, 0).await)?,
        acquired(4),
        "claim after 4 failed runs",
    )?;
    run.eq(
        run.ok(store.dead_letter(&key, "a").await)?,
        true,
        "owner dead-letters",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::DeadLettered,
        "duplicate of the original",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 1).await)?,
        acquired(0),
        "first redrive starts a new count",
    )?;
    run.eq(
        run.ok(store.dead_letter(&key, "b").await)?,
        true,
        "the redrive dead-letters again",
    )?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 1).await)?,
        Claim::DeadLettered,
        "the same redrive again",
    )?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        Claim::DeadLettered,
        "the original again",
    )?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 2).await)?,
        acquired(0),
        "second redrive",
    )?;
    run.eq(
        run.ok(store.complete(&key, "c").await)?,
        true,
        "the second redrive succeeds",
    )?;
    run.eq(
        run.ok(store.claim(&key, "d", lease, 3).await)?,
        Claim::Completed,
        "a redrive after success",
    )
}

/// A released key can be claimed again and keeps (or updates) its attempt count.
pub async fn released_key_keeps_its_attempts(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("released_key_keeps_its_attempts", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    run.eq(
        run.ok(store.claim(&key, "a", lease, 0).await)?,
        acquired(0),
        "first claim",
    )?;
    run.ok(store.release(&key, "a", Some(2)).await)?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        acquired(2),
        "claim after release(Some(2))",
    )?;
    run.ok(store.release(&key, "b", None).await)?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        acquired(2),
        "claim after release(None)",
    )?;
    run.ok(store.release(&key, "c", Some(3)).await)?;
    run.eq(
        run.ok(store.claim(&key, "d", lease, 0).await)?,
        acquired(3),
        "claim after release(Some(3))",
    )?;
    run.eq(
        run.ok(store.complete(&key, "d").await)?,
        true,
        "completes at last",
    )
}

/// A lease its owner renews is not taken over, even past its first expiry.
pub async fn renewed_lease_is_not_taken_over(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("renewed_lease_is_not_taken_over", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let other = run.instance().await?;
    let key = run.key("k");
    run.eq(
        run.ok(store.claim(&key, "a", lease, 0).await)?,
        acquired(0),
        "first claim",
    )?;
    tokio::time::sleep(lease * 2 / 3).await;
    run.eq(
        run.ok(store.renew(&key, "a", lease).await)?,
        true,
        "the owner renews",
    )?;
    tokio::time::sleep(lease / 2).await;
    run.busy(
        run.ok(other.claim(&key, "b", lease, 0).await)?,
        "a claim past the first lease but within the renewed one",
    )?;
    run.eq(
        run.ok(store.complete(&key, "a").await)?,
        true,
        "the owner completes",
    )
}

/// An expired lease is taken over with the attempt count kept, and every
/// operation of the late owner is refused.
pub async fn expired_lease_is_taken_over_and_late_owner_refused(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new(
        "expired_lease_is_taken_over_and_late_owner_refused",
        backend,
    );
    let lease = backend.lease();
    let store = run.instance().await?;
    let other = run.instance().await?;
    let key = run.key("k");
    run.ok(store.claim(&key, "a", lease, 0).await)?;
    run.ok(store.release(&key, "a", Some(1)).await)?;
    run.eq(
        run.ok(store.claim(&key, "a", lease, 0).await)?,
        acquired(1),
        "claim after one failed run",
    )?;
    tokio::time::sleep(lease + lease / 2).await;
    run.eq(
        run.ok(other.claim(&key, "b", lease, 0).await)?,
        acquired(1),
        "takeover of the expired lease",
    )?;
    run.eq(
        run.ok(store.complete(&key, "a").await)?,
        false,
        "the late owner's completion",
    )?;
    run.eq(
        run.ok(store.renew(&key, "a", lease).await)?,
        false,
        "the late owner's renewal",
    )?;
    run.eq(
        run.ok(store.dead_letter(&key, "a").await)?,
        false,
        "the late owner's dead letter",
    )?;
    run.ok(store.release(&key, "a", Some(9)).await)?;
    run.busy(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        "after the late owner's release, the new owner still holds it",
    )?;
    run.ok(other.release(&key, "b", None).await)?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        acquired(1),
        "the late owner's count was ignored",
    )?;
    run.eq(
        run.ok(store.complete(&key, "c").await)?,
        true,
        "the new owner completes",
    )
}

/// Renew, complete and dead-letter by someone who never held the lease are refused.
pub async fn non_owner_cannot_settle(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("non_owner_cannot_settle", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let absent = run.key("absent");
    run.eq(
        run.ok(store.renew(&absent, "x", lease).await)?,
        false,
        "renewing an absent key",
    )?;
    run.eq(
        run.ok(store.complete(&absent, "x").await)?,
        false,
        "completing an absent key",
    )?;
    run.ok(store.release(&absent, "x", Some(1)).await)?;
    run.eq(
        run.ok(store.claim(&absent, "y", lease, 0).await)?,
        acquired(0),
        "a release of an absent key creates nothing",
    )?;
    run.ok(store.claim(&key, "a", lease, 0).await)?;
    run.eq(
        run.ok(store.renew(&key, "x", lease).await)?,
        false,
        "a stranger's renewal",
    )?;
    run.eq(
        run.ok(store.complete(&key, "x").await)?,
        false,
        "a stranger's completion",
    )?;
    run.eq(
        run.ok(store.dead_letter(&key, "x").await)?,
        false,
        "a stranger's dead letter",
    )?;
    run.busy(
        run.ok(store.claim(&key, "x", lease, 0).await)?,
        "the owner still holds the key",
    )?;
    run.eq(
        run.ok(store.renew(&key, "a", lease).await)?,
        true,
        "the owner's renewal",
    )?;
    run.eq(
        run.ok(store.complete(&key, "a").await)?,
        true,
        "the owner's completion",
    )
}

/// Failed runs recorded through one instance are seen by a new one.
pub async fn attempts_survive_a_new_instance(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("attempts_survive_a_new_instance", backend);
    let lease = backend.lease();
    let key = run.key("k");
    {
        let first = run.instance().await?;
        run.ok(first.claim(&key, "a", lease, 0).await)?;
        run.ok(first.release(&key, "a", Some(3)).await)?;
    }
    let second = run.instance().await?;
    run.eq(
        run.ok(second.claim(&key, "b", lease, 0).await)?,
        acquired(3),
        "claim on a new instance",
    )?;
    run.eq(run.ok(second.complete(&key, "b").await)?, true, "completes")
}

/// A completed key is forgotten after the TTL: a new copy runs again.
pub async fn completed_keys_expire_after_ttl(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("completed_keys_expire_after_ttl", backend);
    let lease = backend.lease();
    let ttl = backend.ttl();
    let store = run.instance().await?;
    let key = run.key("k");
    run.ok(store.claim(&key, "a", lease, 0).await)?;
    run.ok(store.release(&key, "a", Some(2)).await)?;
    run.ok(store.claim(&key, "a", lease, 0).await)?;
    run.eq(run.ok(store.complete(&key, "a").await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::Completed,
        "a duplicate within the TTL",
    )?;
    tokio::time::sleep(ttl + ttl / 2 + Duration::from_millis(100)).await;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        acquired(0),
        "a copy after the TTL starts afresh",
    )?;
    run.eq(
        run.ok(store.complete(&key, "b").await)?,
        true,
        "completes again",
    )
}

/// Keys over [`MAX_KEY_LEN`] bytes are stored hashed; odd characters are kept as they are.
pub async fn long_and_odd_keys_work(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("long_and_odd_keys_work", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let raw = format!("{}{}", run.key("long").as_str(), "k".repeat(300));
    let long = Key::new(&raw);
    run.eq(
        long.as_str().starts_with("sha256:"),
        true,
        "a long key is hashed",
    )?;
    run.eq(
        long.as_str().len() <= MAX_KEY_LEN,
        true,
        "a hashed key fits",
    )?;
    run.eq(
        run.ok(store.claim(&long, "a", lease, 0).await)?,
        acquired(0),
        "claim of a long key",
    )?;
    run.eq(run.ok(store.complete(&long, "a").await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&Key::new(&raw), "b", lease, 0).await)?,
        Claim::Completed,
        "the same long key",
    )?;
    let sibling = Key::new(&format!("{raw}x"));
    run.eq(
        run.ok(store.claim(&sibling, "b", lease, 0).await)?,
        acquired(0),
        "a long key one byte longer",
    )?;
    let odd = run.key("odd 'quote' \"dq\" ; -- % _ \\ {tag} * ? [x] ünï 🦀\n\0 nul");
    run.eq(
        run.ok(store.claim(&odd, "a", lease, 0).await)?,
        acquired(0),
        "claim of an odd key",
    )?;
    run.eq(run.ok(store.complete(&odd, "a").await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&odd, "b", lease, 0).await)?,
        Claim::Completed,
        "the same odd key",
    )
}
