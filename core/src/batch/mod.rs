//! Batch handlers: a handler that takes up to N messages at once (one bulk
//! insert instead of N round trips) and answers each message on its own.
//!
//! A [`HandleBatch`] handler is wrapped in a [`Batcher`], which is a
//! [`Handle`](crate::handler::Handle) like any other: every message still runs through the whole
//! stack on its own (its claim in the idempotency store, its retries, its
//! dead letter, its ack), and only its *attempt* waits to join a batch.
//! So a partial failure stays partial: the handler returns one result per
//! message, a message that failed transiently is retried by itself, one
//! that failed permanently is dead-lettered by itself, and the others are
//! acked.
//!
//! A batch is cut when it holds [`BatchConfig::max`] attempts, or when the
//! oldest attempt in it has waited [`BatchConfig::linger`]. The runner's
//! concurrency bounds how many messages can wait together: give it at
//! least `max` (a batch never holds more messages than are in flight).
//!
//! - **Retries run alone.** An attempt after the first is handed to the
//!   handler in a batch of one: a message that failed once (a poison
//!   message that makes the whole batch fail, a panic) cannot take good
//!   messages down with it again.
//! - **Batch-level failures** (the handler panicked, or returned a number
//!   of results other than the number of messages) fail every attempt of
//!   the batch transiently, so each is retried alone; alone, the same
//!   failure is the message's own and permanent (kind `panic`, or
//!   `permanent` for a wrong count), as a panicking handler's is.
//! - **One message per key.** A batch holds at most one message of a
//!   payload key ([`Payload::key`](crate::payload::Payload::key)); a second waits
//!   for the next batch.
//! - **Cancellation and timeouts.** A batch runs on a task of its own, so
//!   no member's cancellation stops it. An attempt abandoned while it
//!   waits (its timeout, a shutdown) is left out of the batch it would
//!   have joined. The stack's per-attempt timeout covers the wait and the
//!   batch; an attempt that times out while its batch runs is retried,
//!   and the retry first waits for that batch: if the batch handled the
//!   message, the retry succeeds without running it again (never two runs
//!   of one message at once). Keep `linger` well below the timeout.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use backstop::batch::{BatchConfig, HandleBatch};
//! use backstop::memory::MemoryBroker;
//! use backstop::{Context, HandlerError, Message, Runner, StackBuilder};
//!
//! struct BulkInsert;
//!
//! impl HandleBatch<String> for BulkInsert {
//!     type Error = HandlerError;
//!     async fn handle_batch(&self, batch: Vec<(String, Context)>) -> Vec<Result<(), HandlerError>> {
//!         // One statement for the whole batch; here every row but "bad" is fine.
//!         batch
//!             .iter()
//!             .map(|(row, _)| match row.as_str() {
//!                 "bad" => Err(HandlerError::permanent("constraint violated")),
//!                 _ => Ok(()),
//!             })
//!             .collect()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! for row in ["a", "b", "bad", "c"] {
//!     broker.publish_now("rows", Message::new(row))?;
//! }
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .build_batched(BulkInsert, BatchConfig::new(100, Duration::from_millis(20)));
//! let summary = Runner::new(broker.consume("rows", 100).until_drained(), stack)
//!     .concurrency(100)
//!     .run()
//!     .await?;
//! assert_eq!((summary.handled, summary.dead_lettered), (3, 1));
//! # Ok(())
//! # }
//! ```

mod batcher;
mod call;
#[cfg(test)]
mod tests;

pub use self::batcher::Batcher;

use std::future::Future;
use std::time::Duration;

use crate::context::Context;
use crate::error::HandlerError;

/// A handler of several messages at once; see the [module docs](self).
pub trait HandleBatch<T>: Send + Sync + 'static {
    /// The handler's error; converted into a [`HandlerError`] verdict per message.
    type Error: Into<HandlerError>;

    /// Handles `batch` (each message with its attempt's context) and
    /// returns one result per message, in the batch's order.
    fn handle_batch(
        &self,
        batch: Vec<(T, Context)>,
    ) -> impl Future<Output = Vec<Result<(), Self::Error>>> + Send;
}

/// How batches are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    max: usize,
    linger: Duration,
}

impl BatchConfig {
    /// Batches of at most `max` messages (at least 1), cut when full or
    /// when the oldest message in one has waited `linger`.
    pub fn new(max: usize, linger: Duration) -> Self {
        BatchConfig {
            max: max.max(1),
            linger,
        }
    }

    /// The most messages in one batch.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How long the oldest message of a batch waits for others.
    pub fn linger(&self) -> Duration {
        self.linger
    }
}
