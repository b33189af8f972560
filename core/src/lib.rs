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
//! a [`Router`](router::Router) picks the handler by the message's type.
//!
//! The crate root holds what a handler and a `main` name. The rest lives
//! in the module that defines it: what a broker adapter implements
//! ([`runner::Source`], [`delivery::Acker`], [`publish::Publisher`],
//! [`dead_letter::DeadLetterSink`], [`retry::RetrySink`]), what a store
//! implements ([`idempotency::Store`]), each layer for use alone
//! (`ack::AckLayer`, `retry::RetryLayer`, …), the errors
//! ([`error`]) and the in-memory broker ([`memory`]).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod ack;
mod at_once;
pub mod attempt;
pub mod batch;
pub mod breaker;
mod cancellation;
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

// The front door: what a handler and a `main` name. Everything else is
// reached through its module (`backstop::delivery::Delivery`,
// `backstop::idempotency::Store`, ...), as in tower.
pub use crate::context::Context;
pub use crate::error::{ErrorKind, HandlerError};
pub use crate::handler::{Handle, handler_fn};
pub use crate::idempotency::KeySource;
pub use crate::message::Message;
pub use crate::payload::Payload;
pub use crate::retry::RetryPolicy;
pub use crate::runner::{RunError, Runner, Summary};
pub use crate::stack::{Stack, StackBuilder};

/// Re-exported for handlers that watch for shutdown.
pub use tokio_util::sync::CancellationToken;

/// The derives: `#[derive(Payload)]`, `#[derive(Handler)]`, `#[derive(Classify)]`.
#[cfg(feature = "macros")]
pub use backstop_macros::{Classify, Handler, Payload};

// Names that left the crate root, kept one release so code written against
// the earlier root still builds (with a deprecation warning naming the new
// path; the CHANGELOG lists them). A trait cannot be deprecated through a
// re-export (rust-lang/rust#30827), so the moved traits stay as hidden
// re-exports for that release instead.
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::ack::AckLayer`")]
pub type AckLayer = crate::ack::AckLayer;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::ack::Settled`")]
pub type Settled = crate::ack::Settled;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::context::Extensions`")]
pub type Extensions = crate::context::Extensions;
#[doc(hidden)]
#[deprecated(
    since = "0.2.0",
    note = "moved: use `backstop::dead_letter::DeadLetterLayer`"
)]
pub type DeadLetterLayer = crate::dead_letter::DeadLetterLayer;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::delivery::AckHandle`")]
pub type AckHandle = crate::delivery::AckHandle;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::delivery::Delivery`")]
pub type Delivery = crate::delivery::Delivery;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::delivery::Received`")]
pub type Received = crate::delivery::Received;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::AckError`")]
pub type AckError = crate::error::AckError;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::BoxError`")]
pub type BoxError = crate::error::BoxError;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::Error`")]
pub type Error = crate::error::Error;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::Failure`")]
pub type Failure = crate::error::Failure;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::SinkError`")]
pub type SinkError = crate::error::SinkError;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::error::StoreError`")]
pub type StoreError = crate::error::StoreError;
#[doc(hidden)]
#[deprecated(
    since = "0.2.0",
    note = "moved: use `backstop::idempotency::IdempotencyLayer`"
)]
pub type IdempotencyLayer = crate::idempotency::IdempotencyLayer;
#[doc(hidden)]
#[deprecated(
    since = "0.2.0",
    note = "moved: use `backstop::idempotency::MemoryStore`"
)]
pub type MemoryStore = crate::idempotency::MemoryStore;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::message::Headers`")]
pub type Headers = crate::message::Headers;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::message::IdSource`")]
pub type IdSource = crate::message::IdSource;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::message::Meta`")]
pub type Meta = crate::message::Meta;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::outcome::Outcome`")]
pub type Outcome = crate::outcome::Outcome;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::payload::DecodeError`")]
pub type DecodeError = crate::payload::DecodeError;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::publish::PublishError`")]
pub type PublishError = crate::publish::PublishError;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::request::Request`")]
pub type Request<T> = crate::request::Request<T>;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::retry::RetryLayer`")]
pub type RetryLayer = crate::retry::RetryLayer;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::router::Routed`")]
pub type Routed = crate::router::Routed;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::router::Router`")]
pub type Router<R> = crate::router::Router<R>;
#[doc(hidden)]
#[deprecated(
    since = "0.2.0",
    note = "moved: use `backstop::runner::MissingDestinations`"
)]
pub type MissingDestinations = crate::runner::MissingDestinations;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::runner::Readiness`")]
pub type Readiness = crate::runner::Readiness;
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "moved: use `backstop::runner::SourceError`")]
pub type SourceError = crate::runner::SourceError;
#[doc(hidden)]
pub use crate::dead_letter::DeadLetterSink;
#[doc(hidden)]
pub use crate::delivery::Acker;
#[doc(hidden)]
pub use crate::idempotency::Store;
#[doc(hidden)]
pub use crate::publish::Publisher;
#[doc(hidden)]
pub use crate::retry::RetrySink;
#[doc(hidden)]
pub use crate::runner::Source;

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

    pub use crate::dead_letter::DeadLetterSink;
    pub use crate::error::HandlerError;
    pub use crate::handler::Handle;
    pub use crate::idempotency::{KeySource, Store};
    pub use crate::payload::json;
    pub use crate::payload::{DecodeError, Payload};
    pub use crate::retry::RetryPolicy;
    pub use crate::router::{Routed, Router, Routes};
    pub use crate::runner::{Runner, Source};
    pub use crate::settings::Settings;
    pub use crate::stack::{Stack, StackBuilder};
}
