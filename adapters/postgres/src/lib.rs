//! PostgreSQL idempotency store and transactional inbox for backstop.
//!
//! Two ways to make a consumer's effects happen once:
//!
//! - [`PostgresStore`] implements [`backstop::idempotency::Store`] for the idempotency
//!   layer: leases on keys in a table, shared by every worker (plug it in
//!   with [`StackBuilder::idempotency`](backstop::StackBuilder::idempotency)).
//!   Effects outside the database stay at-least-once in a crash window
//!   between the effect and the completion mark.
//! - The [`inbox`]: exactly-once effects on top of at-least-once delivery,
//!   when the effects are writes to the same PostgreSQL database. Each
//!   attempt runs in one transaction that also inserts the message's inbox
//!   row; a redelivery of a committed message is skipped, a crash before the
//!   commit leaves nothing (plug it in with
//!   [`StackBuilder::around_attempt`](backstop::StackBuilder::around_attempt)).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use backstop::{handler_fn, memory::MemoryBroker, Context, HandlerError, KeySource, Runner, StackBuilder};
//! use backstop_postgres::{Inbox, InboxTx, PgConfig, PostgresStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = PgConfig::new("postgres://backstop:backstop@127.0.0.1:5432/backstop").pool()?;
//!
//! // The transactional inbox: the handler's writes commit with the dedup row.
//! let inbox = Inbox::new(pool.clone()).consumer("billing");
//! inbox.migrate().await?;
//!
//! async fn bill(order: String, ctx: Context) -> Result<(), HandlerError> {
//!     let tx = InboxTx::from_context(&ctx)?;
//!     tx.execute("INSERT INTO invoices (order_id) VALUES ($1)", &[&order]).await?;
//!     Ok(())
//! }
//!
//! let broker = MemoryBroker::new();
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .around_attempt(inbox.layer())
//!     .build(handler_fn(bill));
//!
//! // Or (also) the idempotency store, for handlers with effects elsewhere.
//! let store = PostgresStore::new(pool).ttl(Duration::from_secs(7 * 24 * 3600));
//! store.migrate().await?;
//! let _deduplicated = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .idempotency(Arc::new(store.clone()), KeySource::MessageId)
//!     .build(handler_fn(|_order: String, _ctx: Context| async { Ok::<(), HandlerError>(()) }));
//!
//! // Now and then: reclaim the space of expired keys.
//! store.purge_expired().await?;
//!
//! Runner::new(broker.consume("orders", 16), stack)
//!     .concurrency(16)
//!     .shutdown_on_signals()
//!     .run()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every wait is bounded ([`PgConfig`], [`PostgresStore::operation_timeout`],
//! [`Inbox::statement_timeout`]): while the server is down the store fails
//! fast with [`StoreError::Backend`](backstop::error::StoreError::Backend) (the
//! message is deferred, never dead-lettered), and both recover by
//! themselves when it is back.

#![warn(missing_docs)]

mod column;
mod config;
mod conn;
mod error;
pub mod inbox;
mod layout;
mod migrate;
pub mod outbox;
mod store;
mod table;
mod tls;

pub use self::config::PgConfig;
pub use self::error::PostgresError;
pub use self::inbox::{DEFAULT_INBOX_TABLE, Inbox, InboxError, InboxLayer, InboxTx};
pub use self::outbox::{DEFAULT_OUTBOX_TABLE, Outbox, OutboxRelay};
pub use self::store::{DEFAULT_STORE_TABLE, PostgresStore};
pub use self::table::TableName;
