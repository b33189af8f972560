//! The store contract on the in-memory store, and on a namespaced one.

use std::sync::Arc;

use backstop::idempotency::MemoryStore;
use backstop_testkit::store_contract::{SameInstance, TTL};

backstop_testkit::store_contract_tests!(SameInstance::new(
    Arc::new(MemoryStore::new(10_000, TTL)),
    TTL
));

#[tokio::test]
async fn run_all_passes_on_the_memory_store() {
    let backend = SameInstance::new(Arc::new(MemoryStore::new(10_000, TTL)), TTL);
    backstop_testkit::store_contract::run_all(&backend)
        .await
        .expect("contract");
}

/// A namespaced store keeps the contract. (Here, not among the unit tests
/// of `idempotency::namespaced`: the kit is a dev-dependency, and it links
/// `backstop` as a library, not the crate under `cfg(test)`.)
mod namespaced {
    use std::sync::Arc;

    use backstop::idempotency::Namespaced;
    use backstop::idempotency::{MemoryStore, Store};
    use backstop_testkit::store_contract::{self as contract, SameInstance};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_contract() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000, contract::TTL));
        let store: Arc<dyn Store> = Arc::new(Namespaced::new(inner, "contract"));
        let backend = SameInstance::new(store, contract::TTL);
        if let Err(error) = contract::run_all(&backend).await {
            panic!("{error}");
        }
    }
}
