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
//! use backstop::breaker::BreakerConfig;
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
//!     // outages and deliveries near the consumer timeout: delay queue, not a requeue
//!     .postpone_through(Arc::new(rabbit.retry_sink()))
//!     .build(handler_fn(handle));
//!
//! let source = rabbit.source("orders", 16).await?;
//! let summary = Runner::new(source, stack)
//!     .concurrency(16)
//!     .with_breaker(BreakerConfig::new(5, Duration::from_secs(10)))
//!     .shutdown_on_signals()
//!     .run()
//!     .await?;
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
//! - Acks are coalesced per channel (see *Ack coalescing* below); a
//!   `multiple` ack never covers an unsettled delivery.
//! - The source reconnects with backoff after a broker restart or a closed
//!   connection and resumes; in-flight deliveries of the dead channel are
//!   redelivered by the broker.
//! - Every publish waits for a publisher confirm, is `mandatory` (unroutable
//!   is an error) and persistent; see [`publisher`] for destinations.
//! - An outage (store down, `Unavailable`, a busy key) never spends the
//!   quorum queue's delivery count: with
//!   [`postpone_through`](backstop::StackBuilder::postpone_through) the
//!   message goes to its delay queue with the same attempt count, then the
//!   original is acked; a delivery about to outlive the broker's
//!   `consumer_timeout` is postponed the same way ([`RabbitSource`]).
//! - Delayed retry goes through one delay queue per tier and comes back with
//!   `x-backstop-attempt` incremented; `x-death` is never used for counting.
//!
//! # Ack coalescing
//!
//! Each consumer channel keeps an ack window. An ack marks its delivery
//! completed and waits; the channel's flusher, woken once acks wait, sends
//! one `basic.ack(multiple = true)` for the longest run of deliveries from
//! the lowest unsettled one on that are all completed or already settled
//! by an earlier frame, naming the run's last completed tag. Acks behind
//! an unsettled delivery wait for it up to [`HOLD_BEHIND_HOLE`] (20 ms)
//! from its arrival; after that it is slow, and each completed delivery
//! behind it gets a `basic.ack` of its own (a slow delivery does not hold
//! the acks of the fast ones behind it).
//! A delivery being retried, nacked after its delay, deferred through its
//! delay queue or held while the runner is paused is unsettled until its
//! own frame was sent, so no `multiple` frame covers it; no tag is ever
//! named twice (the broker closes a channel on an unknown tag). An ack
//! returns once the frame covering it was sent; when the channel closes,
//! the acks waiting for it fail with
//! [`AckError::ChannelGone`](backstop::error::AckError::ChannelGone) and the
//! broker redelivers those messages. [`ACK_FRAMES`] and [`ACKS_COALESCED`]
//! count what was sent. Acking every 10 to 100 messages is the largest
//! single gain on quorum queues (the broker's work per ack frame).
//!
//! Clusters: [`RabbitMq::connect`] takes the nodes' URLs comma-separated
//! ([`node_urls`]); every connect and reconnect (the source's, the
//! publishers', the shared connection's) tries the nodes in turn from the one
//! that answered last, so a worker fails over to a live node when its node
//! dies, with the source's reconnect backoff between rounds. Quorum queues
//! get a member on every node of the cluster.
//!
//! TLS: `amqps://` URLs (feature `tls`, on by default; rustls with the ring
//! provider) take RabbitMQ's URI query parameters `cacertfile` (else the
//! system roots), `certfile` + `keyfile` (mutual TLS), `verify`
//! (`verify_peer`, or `verify_none` for tests) and `server_name_indication`
//! (a name, or `disable`), e.g.
//! `amqps://user:pass@broker:5671/%2f?cacertfile=/etc/ssl/ca.pem&certfile=/etc/ssl/client.pem&keyfile=/etc/ssl/client.key`.
//! The files are read on every (re)connect, so rotated certificates are
//! picked up without a restart. A TLS parameter on an `amqp://` URL, or an
//! `amqps://` URL in a build without `tls`, is an error.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod acker;
mod broker;
mod connection;
pub mod convert;
mod depth;
mod error;
mod limits;
pub mod publisher;
mod sinks;
mod source;
mod tls;
pub mod topology;
mod window;

pub use crate::acker::RabbitAcker;
pub use crate::broker::RabbitMq;
pub use crate::connection::{ConnectOptions, DEFAULT_URL, node_urls, url_from_env};
pub use crate::depth::DEFAULT_DEPTH_INTERVAL;
pub use crate::error::{ConnectError, ConsumeError, EncodeError, TopologyError, redact};
pub use crate::limits::DEFAULT_MAX_MESSAGE_SIZE;
pub use crate::publisher::RabbitPublisher;
pub use crate::sinks::{RabbitDeadLetterSink, RabbitRetrySink};
pub use crate::source::{DEFAULT_CONSUMER_TIMEOUT, DEFAULT_TIMEOUT_MARGIN, RabbitSource};
pub use crate::topology::{QueueKind, RetryTier, Topology};
pub use crate::window::{ACK_FRAMES, ACKS_COALESCED, HOLD_BEHIND_HOLE};

/// The AMQP client this adapter is built on, for what it does not wrap.
pub use lapin;
