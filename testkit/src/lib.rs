//! Test kits for backstop: the scenarios every broker adapter and every
//! idempotency store must pass, written once, so that "works on RabbitMQ"
//! and "works on Kafka", or "deduplicates on Redis" and "deduplicates on
//! PostgreSQL", mean the same thing.
//!
//! - [`conformance`]: the broker scenarios (publish and subscribe, resend
//!   on error, key order, dead letters through the stack, …). An adapter
//!   implements [`conformance::Harness`] and runs them with
//!   [`conformance_tests!`]. The in-memory broker
//!   ([`backstop::memory::MemoryBroker`]) has its harness here.
//! - [`store_contract`]: the contract of an idempotency [`backstop::idempotency::Store`]
//!   (one winner among concurrent claims, fencing, takeover of expired
//!   leases, batches, TTL, pending letters, …). A store implements
//!   [`store_contract::Backend`] and runs the suite with
//!   [`store_contract_tests!`] (one test per scenario) or
//!   [`store_contract::run_all`].
//! - [`store_outage`]: the scenario every shared store runs with its
//!   server stopped mid-run: no message is acked unprocessed,
//!   dead-lettered for the outage, or run twice once the server is back.
//!
//! The kits are test code: add the crate as a dev-dependency. The macros
//! generate `#[tokio::test]` functions, so the crate that calls them needs
//! tokio with its `macros` and `rt-multi-thread` features.
//!
//! ```
//! use std::sync::Arc;
//!
//! use backstop::idempotency::MemoryStore;
//! use backstop_testkit::store_contract::{SameInstance, TTL, run_all};
//!
//! # #[tokio::main]
//! # async fn main() {
//! let backend = SameInstance::new(Arc::new(MemoryStore::new(10_000, TTL)), TTL);
//! run_all(&backend).await.expect("the in-memory store keeps the contract");
//! # }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod conformance;
pub mod store_contract;
pub mod store_outage;
