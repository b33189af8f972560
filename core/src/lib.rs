//! backstop: message consumers that lose nothing.
//!
//! A tower middleware stack around your handler: ack only after success,
//! bounded retry with exponential backoff and full jitter, idempotency keys
//! with leases, and dead-letter publishing that the broker confirms before
//! the source is acked. The same stack runs on the in-memory broker
//! ([`memory::MemoryBroker`]), RabbitMQ and Kafka.
//!
//! ```
//! use std::sync::Arc;
//! use backstop::{handler_fn, memory::MemoryBroker, Context, HandlerError, Message, Runner, StackBuilder};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! broker.publish_now("greetings", Message::new("hello"))?;
//! broker.publish_now("greetings", Message::new(""))?;
//!
//! async fn greet(text: String, _ctx: Context) -> Result<(), HandlerError> {
//!     if text.is_empty() {
//!         return Err(HandlerError::permanent("empty greeting"));
//!     }
//!     Ok(())
//! }
//!
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink())).build(handler_fn(greet));
//! let summary = Runner::new(broker.consume("greetings", 8).until_drained(), stack)
//!     .concurrency(8)
//!     .run()
//!     .await?;
//! assert_eq!(summary.handled, 1);
//! assert_eq!(summary.dead_lettered, 1);
//! assert_eq!(broker.stats("greetings.dlq").ready, 1);
//! # Ok(())
//! # }
//! ```
//!
//! The layers, outermost first: [`ack`] ⟶ [`decode`] ⟶ [`metrics`] ⟶
//! [`idempotency`] ⟶ [`dead_letter`] ⟶ [`retry`] ⟶ [`timeout`] ⟶ [`catch_panic`]
//! ⟶ your [`Handle`]r. [`StackBuilder`] composes them in that order.
//!
//! One source carrying several payload types, each with its own handler:
//! a [`Router`] picks the handler by the message's type ([`router`]).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod ack;
mod at_once;
pub mod attempt;
pub mod batch;
pub mod breaker;
pub mod catch_panic;
pub mod context;
pub mod copy;
pub mod dead_letter;
pub mod decode;
pub mod delivery;
pub mod error;
pub mod expiry;
pub mod handler;
pub mod headers;
pub mod idempotency;
pub mod inbound;
pub mod lifecycle;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod nodes;
#[cfg(feature = "otel")]
pub mod otel;
pub mod outcome;
pub mod outgoing;
pub mod payload;
pub mod publish;
pub mod redact;
pub mod request;
pub mod retry;
pub mod router;
pub mod runner;
pub mod secret;
pub mod settings;
mod sink;
pub mod stack;
pub mod timeout;
pub mod tls;
pub mod transaction;
pub mod wire;

#[cfg(test)]
mod testing;

/// The former name of [`catch_panic`], kept one release.
#[doc(hidden)]
pub mod panic {
    /// Moved to [`crate::catch_panic::CatchPanic`].
    #[deprecated(
        since = "0.2.0",
        note = "moved: use `backstop::catch_panic::CatchPanic`"
    )]
    pub type CatchPanic<S> = crate::catch_panic::CatchPanic<S>;
    /// Moved to [`crate::catch_panic::CatchPanicLayer`].
    #[deprecated(
        since = "0.2.0",
        note = "moved: use `backstop::catch_panic::CatchPanicLayer`"
    )]
    pub type CatchPanicLayer = crate::catch_panic::CatchPanicLayer;
    /// Moved to [`crate::catch_panic::Panicked`].
    #[deprecated(since = "0.2.0", note = "moved: use `backstop::catch_panic::Panicked`")]
    pub type Panicked = crate::catch_panic::Panicked;
}

pub use crate::ack::{AckLayer, Settled};
pub use crate::context::{Context, Extensions};
pub use crate::dead_letter::{DeadLetterLayer, DeadLetterSink};
pub use crate::delivery::{AckHandle, Acker, Delivery, Received};
pub use crate::error::{
    AckError, BoxError, Error, ErrorKind, Failure, HandlerError, SinkError, StoreError,
};
pub use crate::handler::{Handle, handler_fn};
pub use crate::idempotency::{IdempotencyLayer, KeySource, MemoryStore, Store};
pub use crate::message::{Headers, IdSource, Message, Meta};
pub use crate::outcome::Outcome;
pub use crate::payload::{DecodeError, Payload};
pub use crate::publish::{PublishError, Publisher};
pub use crate::request::Request;
pub use crate::retry::{RetryLayer, RetryPolicy, RetrySink};
pub use crate::router::{Routed, Router};
pub use crate::runner::{MissingDestinations, Readiness, Runner, Source, SourceError, Summary};
pub use crate::stack::{Stack, StackBuilder};

/// Re-exported for handlers that watch for shutdown.
pub use tokio_util::sync::CancellationToken;

/// The derives: `#[derive(Payload)]`, `#[derive(Handler)]`, `#[derive(Classify)]`.
#[cfg(feature = "macros")]
pub use backstop_macros::{Classify, Handler, Payload};

/// What the derives' generated code names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde::de::DeserializeOwned;
    pub use serde_json;
    pub use std::convert::From;
    pub use std::default::Default;
    pub use std::error::Error;
    pub use std::fmt::Display;
    pub use std::marker::{Send, Sync};
    pub use std::option::Option;
    pub use std::result::Result;
    pub use std::string::{String, ToString};
    pub use std::sync::Arc;
    pub use std::time::Duration;
    pub use std::unreachable;

    pub use crate::payload::json;
    pub use crate::router::{Routed, Router, Routes};
    pub use crate::settings::Settings;
    pub use crate::{
        DeadLetterSink, DecodeError, Handle, HandlerError, KeySource, Payload, RetryPolicy, Runner,
        Source, Stack, StackBuilder, Store,
    };
}
