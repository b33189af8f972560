//! Redis idempotency store for backstop.
//!
//! [`RedisStore`] implements [`backstop::idempotency::Store`]: the lease state machine of
//! the idempotency layer (`absent → in_progress{fence, lease_until} →
//! completed | dead_lettered`, with release, renewal, takeover of expired
//! leases counted as crashed runs, fencing tokens and the redrive rule) as
//! one atomic Lua script per operation or batch, so every worker sharing the
//! server and key prefix deduplicates against the others, and the failed-run
//! count of a key survives restarts.
//!
//! Plug it into a stack with [`StackBuilder::idempotency`](backstop::StackBuilder::idempotency):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use backstop::{handler_fn, memory::MemoryBroker, Context, HandlerError, KeySource, Runner, StackBuilder};
//! use backstop_redis::{RedisConfig, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect_with(
//!     RedisConfig::new("redis://127.0.0.1:6379")
//!         .prefix("orders:dedup:")
//!         .ttl(Duration::from_secs(7 * 24 * 3600)),
//! )
//! .await?;
//!
//! async fn ship(order: String, _ctx: Context) -> Result<(), HandlerError> {
//!     println!("shipping {order}");
//!     Ok(())
//! }
//!
//! let broker = MemoryBroker::new();
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .idempotency(Arc::new(store), KeySource::MessageId)
//!     .build(handler_fn(ship));
//! Runner::new(broker.consume("orders", 16), stack)
//!     .concurrency(16)
//!     .shutdown_on_signals()
//!     .run()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! When Redis is down, every operation fails within
//! [`RedisConfig::operation_timeout`] with
//! [`StoreError::Backend`](backstop::error::StoreError::Backend); backstop then
//! nacks the message with backoff (never dead-letters it), and the store
//! reconnects by itself once Redis is back.

#![warn(missing_docs)]

mod config;
mod error;
mod layout;
mod link;
mod scripts;
mod store;
mod verdict;

pub use self::config::RedisConfig;
pub use self::error::RedisStoreError;
pub use self::store::RedisStore;
