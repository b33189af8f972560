//! Publishing from a handler: [`Context::publish`](crate::context::Context::publish) and the back-ends behind it.
//!
//! A handler that emits messages of its own ("order placed" after placing an
//! order) calls [`Context::publish`](crate::context::Context::publish). Where the message goes is decided by
//! the stack, not the handler: a wrapper around each attempt puts an
//! [`Outbound`] into the attempt's [`Extensions`](crate::context::Extensions).
//!
//! - [`PublishLayer`] (here) publishes at once through a confirmed
//!   [`Publisher`](crate::publish::Publisher): the call returns after the broker's confirm. An attempt
//!   that fails after publishing has published anyway, so a retry publishes
//!   again (same message id, see below): at-least-once.
//! - The PostgreSQL outbox (`backstop_postgres::Outbox`, with the inbox)
//!   writes the message into the attempt's transaction: it exists only if
//!   the handler's effects commit, and a relay sends it afterwards.
//!
//! [`Context::publish`](crate::context::Context::publish) gives each message an id derived from the message
//! being handled, its place among this attempt's publishes and the
//! consumer's keyspace (`<keyspace>:<message id>:out:<n>`, the keyspace
//! naming the queue or topic, the Kafka group and the service if any, as
//! idempotency keys do: two consumers of one message never publish the
//! same id), so a retried attempt publishes
//! the same ids and a consumer with idempotency keyed by message id sees
//! each once
//! ([`Context::publish_keeping_id`](crate::context::Context::publish_keeping_id) keeps the id you set instead: keep it
//! stable yourself). Each carries [`CAUSED_BY`], the id of the message
//! whose handler published it.
//!
//! ```
//! use std::sync::Arc;
//! use backstop::memory::MemoryBroker;
//! use backstop::outgoing::PublishLayer;
//! use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! broker.publish_now("orders", Message::new("o-1").with_message_id("m-1"))?;
//!
//! async fn place(order: String, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.publish("placed", Message::new(order)).await?;
//!     Ok(())
//! }
//!
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .around_attempt(PublishLayer::new(broker.clone()))
//!     .build(handler_fn(place));
//! Runner::new(broker.consume("orders", 8).until_drained(), stack).run().await?;
//! let placed = broker.peek("placed");
//! assert_eq!(placed.len(), 1);
//! assert_eq!(placed[0].meta.message_id, "orders:m-1:out:0");
//! # Ok(())
//! # }
//! ```

mod backends;
mod layer;
mod outbound;
#[cfg(test)]
mod tests;

pub use self::backends::{Collected, confirmed};
pub use self::layer::{PublishLayer, PublishService};
pub use self::outbound::Outbound;

use crate::error::{BoxError, HandlerError};
use crate::message::Message;
use crate::publish::PublishError;

/// The header naming the message whose handler published this one.
pub const CAUSED_BY: &str = "x-backstop-caused-by";

/// Where the messages a handler publishes go: a broker at once, or a
/// transaction's outbox. Implemented by back-ends; handlers call
/// [`Context::publish`](crate::context::Context::publish).
#[async_trait::async_trait]
pub trait Outgoing: Send + Sync + 'static {
    /// Takes `message` for `destination`. Returns once it is confirmed by
    /// the broker or written where it will be (a transaction's outbox).
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed>;
}

/// A publish from a handler failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishFailed {
    /// No wrapper gave this attempt a place to publish to.
    #[error(
        "this handler's stack has no publisher: add one around each attempt \
         (StackBuilder::around_attempt(PublishLayer::new(publisher)), or the PostgreSQL \
         inbox with an outbox)"
    )]
    NoPublisher,
    /// The destination name is empty.
    #[error("a message published from a handler needs a destination (got an empty name)")]
    NoDestination,
    /// The broker refused or did not confirm the message.
    #[error("publishing to {destination:?} failed: {source}")]
    Publish {
        /// Where it was going.
        destination: String,
        /// The publisher's error.
        #[source]
        source: PublishError,
    },
    /// The back-end could not write it (a transaction's outbox insert failed).
    #[error("writing the message for {destination:?} failed: {source}")]
    Write {
        /// Where it was going.
        destination: String,
        /// True when retrying cannot help (a value the database refuses).
        permanent: bool,
        /// The back-end's error.
        #[source]
        source: BoxError,
    },
}

impl PublishFailed {
    /// True when retrying the attempt cannot help: no publisher configured,
    /// no destination, or a refusal for good ([`PublishError::is_permanent`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishFailed::NoPublisher | PublishFailed::NoDestination => true,
            PublishFailed::Publish { source, .. } => source.is_permanent(),
            PublishFailed::Write { permanent, .. } => *permanent,
        }
    }
}

impl From<PublishFailed> for HandlerError {
    fn from(error: PublishFailed) -> Self {
        if error.is_permanent() {
            HandlerError::permanent(error)
        } else {
            HandlerError::transient(error)
        }
    }
}

/// Why a message could not be published: the error as a boxed source, for
/// back-ends that wrap [`PublishFailed::Write`].
pub fn write_failed(
    destination: &str,
    permanent: bool,
    source: impl Into<BoxError>,
) -> PublishFailed {
    PublishFailed::Write {
        destination: destination.to_owned(),
        permanent,
        source: source.into(),
    }
}
