//! The store contract: one suite of scenarios every [`Store`] must pass, so
//! "deduplicates on Redis" and "deduplicates on PostgreSQL" mean the same
//! thing as on the [`MemoryStore`](backstop::idempotency::MemoryStore).
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
//! backstop_testkit::store_contract_tests!(MyBackend::connect().await);
//! ```

mod scenarios;

pub use self::scenarios::*;

use std::sync::Arc;
use std::time::Duration;

use backstop::error::{BoxError, StoreError};
use backstop::idempotency::Store;

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

    /// True if the store keeps pending letters ([`Store::release_with_letter`]).
    /// If not (the trait's default), the scenario checks only that
    /// `release_with_letter` releases the lease with the letter's attempts.
    fn keeps_pending_letters(&self) -> bool {
        false
    }
}

/// A [`Backend`] whose every "new instance" is one shared store: for
/// in-process stores such as [`MemoryStore`](backstop::idempotency::MemoryStore), whose data
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

    fn keeps_pending_letters(&self) -> bool {
        true
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

/// The contract's scenarios, each named once, in the order [`run_all`]
/// runs them. `__store_contract_scenarios!([m] args)` expands to
/// `m! { args scenario, scenario, … }`: [`run_all`] and
/// [`store_contract_tests!`](crate::store_contract_tests) are both made
/// from this list. Not an API of its own.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_contract_scenarios {
    ([$($then:tt)*] $($args:tt)*) => {
        $($then)*! { $($args)*
            one_winner_among_concurrent_claims,
            completed_key_is_done,
            dead_lettered_key_admits_only_the_next_replay,
            released_key_keeps_its_attempts,
            renewed_lease_is_not_taken_over,
            expired_lease_is_taken_over_and_late_owner_refused,
            takeover_counts_a_crash_release_does_not,
            stale_fences_are_refused,
            non_owner_cannot_settle,
            attempts_survive_a_new_instance,
            batches_answer_per_item,
            completed_keys_expire_after_ttl,
            long_and_odd_keys_work,
            pending_letter_survives_a_new_instance
        }
    };
}

/// Generates one `#[tokio::test]` per contract scenario for a backend expression.
///
/// The expression is evaluated inside each async test, so it may `.await`.
///
/// ```text
/// // tests/contract.rs of a store crate
/// backstop_testkit::store_contract_tests!(MyBackend::connect().await);
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($backend:expr) => {
        $crate::__store_contract_scenarios!([$crate::store_contract_tests] @each $backend;);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend;
                if let Err(error) = $crate::store_contract::$name(&backend).await {
                    panic!("{error}");
                }
            }
        )*
    };
}

/// Defines [`run_all`] over the scenario list.
macro_rules! define_run_all {
    ($($name:ident),*) => {
        /// Runs every scenario in turn; stops at the first violation.
        pub async fn run_all(backend: &dyn Backend) -> Result<(), ContractError> {
            $(scenarios::$name(backend).await?;)*
            Ok(())
        }
    };
}

crate::__store_contract_scenarios!([define_run_all]);
