//! Apache Kafka adapter for backstop, on rdkafka.
//!
//! A consumer group member as a backstop [`Source`](backstop::runner::Source)
//! ([`KafkaSource`]), a confirmed idempotent [`Publisher`](backstop::publish::Publisher)
//! ([`KafkaPublisher`]), the [`DeadLetterSink`](backstop::dead_letter::DeadLetterSink)
//! and [`RetrySink`](backstop::retry::RetrySink) on top of it, topic helpers, and
//! [`Kafka`] to wire a worker in a few lines:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use backstop::{handler_fn, Context, HandlerError, RetryPolicy, Runner, StackBuilder};
//! use backstop_kafka::{Kafka, TopicSpec};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kafka = Kafka::new("127.0.0.1:9092", "billing");
//! // orders, orders.billing.dlq and orders.billing.retry.{5s,30s,5m}
//! kafka.ensure_topics([TopicSpec::new("orders").partitions(6)]).await?;
//!
//! async fn bill(order: serde_json::Value, _ctx: Context) -> Result<(), HandlerError> {
//!     if order["amount"].as_i64().is_none() {
//!         return Err(HandlerError::permanent("order without an amount"));
//!     }
//!     Ok(())
//! }
//!
//! let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink()?))
//!     .retry(RetryPolicy::retries(5).in_process_limit(Duration::from_secs(1)))
//!     .retry_sink(Arc::new(kafka.retry_sink()?))
//!     .build(handler_fn(bill));
//! let summary = Runner::new(kafka.source(&["orders"], 32)?, stack)
//!     .concurrency(32)
//!     .shutdown_on_signals()
//!     .run()
//!     .await?;
//! println!("{summary}");
//! # Ok(())
//! # }
//! ```
//!
//! # How the consumer works
//!
//! A `BaseConsumer` is polled on a dedicated thread, so `poll` runs steadily
//! whatever the handlers do (rebalance callbacks run inside it, and
//! `max.poll.interval.ms` is never tripped by slow handlers). Offsets are
//! stored explicitly (`enable.auto.offset.store=false`) and committed by
//! librdkafka's auto commit; assignment is `cooperative-sticky` (`roundrobin`
//! for static members, whose restart in the middle of a cooperative
//! rebalance could leave partitions unowned: see
//! [`KafkaConfig::group_instance_id`]).
//!
//! * Each partition has an offset tracker. The stored offset is the last
//!   finished offset + 1 over the offsets actually received (gaps from
//!   transaction markers or compaction are fine), never past a message that
//!   runs, waits or failed. A partition that tracks more than
//!   [`KafkaConfig::max_pending_per_partition`] messages (or
//!   [`KafkaConfig::max_pending_bytes_per_partition`] bytes) is paused (not
//!   the poll loop) until half of them are done. The whole consumer has a
//!   budget too ([`KafkaConfig::max_pending`], [`KafkaConfig::max_pending_bytes`]):
//!   when all partitions together reach it, every partition is paused until
//!   the totals are back to half, however many partitions are assigned.
//! * Concurrency spans partitions and, inside a partition, keys: a message
//!   with key K waits while an earlier message with key K of its partition
//!   is unfinished.
//! * A nacked or dropped delivery is handed out again by the same consumer,
//!   and the partition's offset stays below it; after a restart the group
//!   resumes at the first unfinished offset.
//! * On revoke: stop handing out the partition's messages, fence the
//!   partition so late acks are refused (the new owner reads those messages
//!   again), and store what is done; librdkafka commits it as part of the
//!   unassignment and holds the rebalance until the commit completed (a
//!   blocking commit inside the callback could stall the poll thread for a
//!   minute while the coordinator is away). On close: commit, leave.
//! * If the poll thread dies (a panic), `next` returns a fatal
//!   [`SourceError`](backstop::runner::SourceError) and the runner stops with it,
//!   instead of waiting for messages that never come.
//! * Message id: the `x-backstop-message-id` header, else
//!   `<topic>/<partition>/<offset>` (carried on every copy). Attempt:
//!   `x-backstop-attempt`. Meta: topic, partition, offset, timestamp; the
//!   record key is [`Message::key`](backstop::Message::key).
//!
//! # Exactly once
//!
//! With [`KafkaConfig::exactly_once`] (or [`Kafka::exactly_once`]) a
//! delivery's dead letter, retry copy and handler outputs
//! ([`Kafka::publish_layer`]) are committed in one transaction with the
//! offsets they follow from, and its idempotency marks are written after
//! that commit; see [`transaction`].
//!
//! # Delayed retries
//!
//! See [`retry`]: long delays go to `<topic>.<group>.retry.<tier>` and are
//! held, with their partition paused, until `x-backstop-due`, but never
//! longer than the tier's delay (no partition parks behind one long delay). Per-key order
//! is not kept across such a retry; in-process retries keep it.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod acker;
mod blocking;
mod config;
mod depth;
mod dispatch;
pub mod epoch;
mod error;
mod kafka;
mod link;
pub mod names;
mod options;
mod parked_reader;
pub mod parking;
mod poller;
mod probe;
mod publisher;
pub mod read;
mod record;
pub mod retry;
mod sinks;
mod source;
mod telemetry;
mod topic_partition;
mod topics;
mod tracker;
pub mod transaction;
#[cfg(feature = "tls")]
mod verification;

pub use crate::blocking::blocking;
pub use crate::config::{DEFAULT_BROKERS, KafkaConfig, OffsetReset, brokers_from_env};
pub use crate::error::Error;
pub use crate::kafka::Kafka;
pub use crate::names::{
    dlq_state_topic, dlq_topic, epoch_topic, is_companion_topic, is_epoch_topic, parked_topic,
    retry_prefix, retry_topic,
};
pub use crate::options::{KafkaOption, OptionError, is_secret};
pub use crate::publisher::KafkaPublisher;
pub use crate::record::{assigned_message_id, to_message};
pub use crate::retry::{RetryTier, RetryTiers};
pub use crate::sinks::{KafkaDeadLetterSink, KafkaRetrySink};
pub use crate::source::KafkaSource;
pub use crate::topics::{HEADER_HEADROOM, TopicSpec, Topics, partition_count};
pub use crate::transaction::{ExactlyOnce, TransactionalPublishLayer};

/// Re-exported so callers can name librdkafka types and settings.
pub use rdkafka;
