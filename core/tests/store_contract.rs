//! The store contract on the in-memory store.

use std::sync::Arc;

use backstop::MemoryStore;
use backstop::idempotency::contract::{SameInstance, TTL};

backstop::store_contract_tests!(SameInstance::new(
    Arc::new(MemoryStore::new(10_000, TTL)),
    TTL
));

#[tokio::test]
async fn run_all_passes_on_the_memory_store() {
    let backend = SameInstance::new(Arc::new(MemoryStore::new(10_000, TTL)), TTL);
    backstop::idempotency::contract::run_all(&backend)
        .await
        .expect("contract");
}
