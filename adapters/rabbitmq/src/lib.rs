//! RabbitMQ adapter for backstop, on lapin.
//!
//! [`RabbitMq`] is where a worker starts: it declares the safe
//! [`Topology`] (quorum queue, DLQ through a dead-letter exchange,
//! per-tier delay queues), and makes the [`RabbitSource`] the
//! [`Runner`](backstop::Runner) drives, the [`RabbitPublisher`], and the two
//! sinks the stack writes to: [`RabbitDeadLetterSink`] and
//! [`RabbitRetrySink`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use backstop::{handler_fn, Context, HandlerError, RetryPolicy, Runner, StackBuilder};
//! use backstop_rabbitmq::{RabbitMq, Topology};
//!
//! async fn handle(order: String, _ctx: Context) -> Result<(), HandlerError> {
//!     if order.is_empty() {
//!         return Err(HandlerError::permanent("empty order"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rabbit = RabbitMq::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//!
//! // orders (quorum), orders.dlx → orders.dlq, orders.retry.{5s,30s,5m}
//! let policy = RetryPolicy::retries(4);
//! let secs = Duration::from_secs;
//! rabbit
//!     .declare(&Topology::quorum("orders").max_attempts(policy.max_attempts).retry_tiers([secs(5), secs(30), secs(300)]))
//!     .await?;
//!
//! let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
//!     .retry(policy)
//!     .retry_sink(Arc::new(rabbit.retry_sink()))
//!     .build(handler_fn(handle));
//!
//! let source = rabbit.source("orders", 16).await?;
//! let summary = Runner::new(source, stack).concurrency(16).shutdown_on_signals().run().await?;
//! println!("{summary}");
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - Manual acks by delivery tag, only after the stack settled the message,
//!   on the channel that delivered it ([`RabbitAcker`]); a dropped delivery
//!   is nacked with requeue.
//! - Per-consumer prefetch (`basic_qos`, never global).
//! - The source reconnects with backoff after a broker restart or a closed
//!   connection and resumes; in-flight deliveries of the dead channel are
//!   redelivered by the broker.
//! - Every publish waits for a publisher confirm, is `mandatory` (unroutable
//!   is an error) and persistent; see [`publisher`] for destinations.
//! - Delayed retry goes through one delay queue per tier and comes back with
//!   `x-backstop-attempt` incremented; `x-death` is never used for counting.
//!
//! This build has no TLS (`amqps://`) support: lapin is built with its tokio
//! runtime only.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod acker;
mod backoff;
mod broker;
mod connection;
pub mod convert;
mod error;
pub mod publisher;
mod sinks;
mod source;
pub mod topology;

pub use crate::acker::RabbitAcker;
pub use crate::broker::RabbitMq;
pub use crate::connection::{ConnectOptions, DEFAULT_URL, url_from_env};
pub use crate::error::{ConnectError, ConsumeError, EncodeError, TopologyError, redact};
pub use crate::publisher::RabbitPublisher;
pub use crate::sinks::{RabbitDeadLetterSink, RabbitRetrySink};
pub use crate::source::RabbitSource;
pub use crate::topology::{QueueKind, RetryTier, Topology};

/// The AMQP client this adapter is built on, for what it does not wrap.
pub use lapin;
