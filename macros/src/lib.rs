//! Derive macros for backstop handlers, re-exported by the `backstop` crate.
//!
//! - [`Payload`](macro@Payload): a serde type becomes a message body, with its
//!   idempotency key and routing defaults.
//! - [`Handler`](macro@Handler): a struct implementing `backstop::Handle<T>`
//!   gets constructors of its fully configured stack and runner.
//! - [`Classify`](macro@Classify): an error enum converts into a
//!   `backstop::HandlerError` verdict, variant by variant.
//!
//! Every misuse is a compile error on the attribute at fault, saying what to
//! write instead. The generated code names the runtime through
//! `::backstop::__private`, so the crate must be a dependency named `backstop`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod attr;
mod codegen;
mod duration;
mod errors;
mod expand;
mod validate;

/// Implements `backstop::Payload` for a serde type: decoded as JSON, keyed by
/// the field marked `#[payload(key)]`.
///
/// The type must also implement `serde::Deserialize`, `Clone`, `Send` and
/// `Sync` (the `Payload` supertraits).
///
/// # Attributes
///
/// On the type, all optional:
///
/// - `#[payload(source = "orders")]`: the queue or topic this payload is
///   consumed from (`Payload::default_source`).
/// - `#[payload(dlq = "orders.dlq")]`: where its dead letters go
///   (`Payload::default_dlq`); a handler's `dlq` overrides it.
///
/// On at most one field of a struct:
///
/// - `#[payload(key)]`: the field is the idempotency key (`Payload::key`),
///   also used as the Kafka record key. It must be a `String` (or `str`
///   behind a pointer: `Box<str>`, `Arc<str>`, `Cow<'static, str>`), an
///   integer (`u64`, `i32`, `NonZeroU64`, …) or a `char`.
/// - `#[payload(key, display)]`: the field is the key, rendered with its
///   `Display` impl; for other types whose text identifies a message, such as
///   `Uuid`. `Option`, collections, tuples, arrays, floats and `bool` are
///   never keys.
///
/// A payload without a key field has no key (`key()` returns `None`); a
/// handler that deduplicates by key then skips deduplication for it.
///
/// # Example
///
/// ```
/// use backstop::Payload;
///
/// #[derive(Clone, serde::Deserialize, Payload)]
/// #[payload(source = "orders", dlq = "orders.dlq")]
/// struct OrderPlaced {
///     #[payload(key)]
///     order_id: u64,
///     amount: i64,
/// }
///
/// let order = OrderPlaced::decode(br#"{"order_id":7,"amount":5}"#).unwrap();
/// assert_eq!(order.key().as_deref(), Some("7"));
/// assert_eq!(order.amount, 5);
/// assert_eq!(OrderPlaced::default_source(), Some("orders"));
/// assert_eq!(OrderPlaced::default_dlq(), Some("orders.dlq"));
/// assert!(OrderPlaced::decode(b"not json").is_err());
/// ```
#[proc_macro_derive(Payload, attributes(payload))]
pub fn derive_payload(input: TokenStream) -> TokenStream {
    expand::derive(input, expand::Derive::Payload)
}

/// Generates the configured stack of a struct implementing
/// `backstop::Handle<T>`: the struct, its `handle` method and one line to run it.
///
/// # Attributes
///
/// `#[handler(...)]` on the type, with these keys:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `payload = Type` | the payload type `T` of `Handle<T>` (required, unless `routes` is given) | |
/// | `routes("order.placed" = OrderPlaced, ...)` | route by message type instead: each type to the struct's `Handle` impl for its payload type (see below) | |
/// | `type_from = event_type` | with `routes`: a `fn(&Message) -> Option<&str>` that reads the type | `backstop::router::DEFAULT_TYPE_SOURCES` |
/// | `retries = 5` | retries after the first attempt (`RetryPolicy::retries`) | 4 |
/// | `backoff(initial = "100ms", max = "10s")` | exponential backoff bounds (either may be left out) | 100 ms, 10 s |
/// | `timeout = "30s"` | per-attempt timeout; an attempt past it fails transiently, kind `timeout` | none |
/// | `idempotency = "key"` | deduplicate by the payload's key (`KeySource::Payload`) | `"none"` |
/// | `idempotency = "message_id"` | deduplicate by the message id (`KeySource::MessageId`) | |
/// | `idempotency = "key_or_message_id"` | the payload's key, else the message id | |
/// | `idempotency = "none"` | no idempotency layer | |
/// | `concurrency = 32` | messages in flight at once (`CONCURRENCY`) | 1 |
/// | `dlq = "orders.dlq"` | dead-letter destination; overrides the payload's `dlq` | the payload's, else the sink's |
/// | `source = "orders"` | the queue or topic to consume; overrides the payload's `source` | the payload's |
///
/// Durations are checked at compile time; they are a number and a unit, such
/// as `"250ms"`, `"10s"`, `"1m"`, `"2h"` or `"1m 30s"`.
///
/// `idempotency = "key"` on a payload without a `#[payload(key)]` field
/// compiles, but cannot be checked by the macro: such messages are not
/// deduplicated (`Payload::key` returns `None`).
///
/// # Generated API
///
/// On the struct (`store` is a parameter only when `idempotency` is not `"none"`):
///
/// ```text
/// pub const CONCURRENCY: usize;
/// pub fn source_name() -> Option<&'static str>;
/// pub fn stack_builder(dead_letter: Arc<dyn DeadLetterSink>, store: Arc<dyn Store>) -> StackBuilder<T>;
/// pub fn router(self) -> Router<impl Routes>; // with `routes(...)` only
/// pub fn stack(self, dead_letter: Arc<dyn DeadLetterSink>, store: Arc<dyn Store>) -> Stack;
/// pub fn runner<S: Source>(self, source: S, dead_letter: Arc<dyn DeadLetterSink>, store: Arc<dyn Store>) -> Runner<S, Stack>;
/// ```
///
/// `stack_builder` returns the configured builder, to add what attributes do
/// not say (a retry sink, a payload limit) before `build(handler)`.
///
/// # Routing by message type
///
/// With `routes(...)` instead of `payload`, the struct implements
/// `Handle<P>` once per route's payload type, and the stack's payload is
/// `backstop::router::Routed`: a `backstop::router::Router` reads each message's type (the
/// header `type`, the AMQP `type` property, the header `ce_type` (or `ce-type`); or
/// `type_from`), decodes the body as its route's type and calls that impl.
/// A message with no type or an unrouted one is dead-lettered as
/// `unknown_type`. A type routed twice is a compile error, and so is
/// `idempotency = "key"` (the key is taken before the message is routed:
/// use `"message_id"`). The struct also gets
/// `pub fn router(self) -> Router<impl Routes>`; `source` comes only from
/// the attribute.
///
/// ```
/// use std::sync::Arc;
/// use backstop::memory::MemoryBroker;
/// use backstop::{Context, Handle, Handler, HandlerError, Message, Payload};
///
/// #[derive(Clone, serde::Deserialize, Payload)]
/// struct OrderPlaced { order_id: String }
///
/// #[derive(Clone, serde::Deserialize, Payload)]
/// struct OrderCancelled { order_id: String }
///
/// #[derive(Handler)]
/// #[handler(routes("order.placed" = OrderPlaced, "order.cancelled" = OrderCancelled), source = "orders")]
/// struct Orders;
///
/// impl Handle<OrderPlaced> for Orders {
///     type Error = HandlerError;
///     async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> { Ok(()) }
/// }
///
/// impl Handle<OrderCancelled> for Orders {
///     type Error = HandlerError;
///     async fn handle(&self, _order: OrderCancelled, _ctx: Context) -> Result<(), HandlerError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// let typed = |ty: &str| Message::new(r#"{"order_id":"o-1"}"#).with_header("type", ty);
/// broker.publish_now("orders", typed("order.placed"))?;
/// broker.publish_now("orders", typed("order.cancelled"))?;
/// broker.publish_now("orders", typed("order.refunded"))?;
///
/// let summary = Orders
///     .runner(broker.consume("orders", 1).until_drained(), Arc::new(broker.dead_letter_sink()))
///     .run()
///     .await?;
/// assert_eq!((summary.handled, summary.dead_lettered), (2, 1));
/// assert_eq!(broker.peek("orders.dlq")[0].header("x-backstop-error-kind"), Some("unknown_type"));
/// # Ok(())
/// # }
/// ```
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use backstop::memory::MemoryBroker;
/// use backstop::{Context, Handle, Handler, HandlerError, Message, Payload};
///
/// #[derive(Clone, serde::Deserialize, Payload)]
/// #[payload(source = "orders")]
/// struct OrderPlaced {
///     #[payload(key)]
///     order_id: String,
/// }
///
/// #[derive(Handler)]
/// #[handler(payload = OrderPlaced, retries = 2, backoff(initial = "1ms", max = "10ms"), timeout = "5s", concurrency = 8)]
/// struct Fulfil;
///
/// impl Handle<OrderPlaced> for Fulfil {
///     type Error = HandlerError;
///     async fn handle(&self, order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
///         if order.order_id.is_empty() {
///             return Err(HandlerError::permanent("no order id"));
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// let queue = Fulfil::source_name().unwrap();
/// broker.publish_now(queue, Message::new(r#"{"order_id":"o-1"}"#))?;
/// broker.publish_now(queue, Message::new(r#"{"order_id":""}"#))?;
///
/// let summary = Fulfil
///     .runner(broker.consume(queue, Fulfil::CONCURRENCY).until_drained(), Arc::new(broker.dead_letter_sink()))
///     .run()
///     .await?;
/// assert_eq!((summary.handled, summary.dead_lettered), (1, 1));
/// assert_eq!(broker.stats("orders.dlq").ready, 1);
/// # Ok(())
/// # }
/// ```
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(input: TokenStream) -> TokenStream {
    expand::derive(input, expand::Derive::Handler)
}

/// Implements `From<YourError> for backstop::HandlerError`, classifying each
/// variant as transient (retried) or permanent (dead-lettered now).
///
/// The type must implement `std::error::Error + Send + Sync + 'static`; the
/// whole value becomes the verdict's source, so its chain of sources is kept.
///
/// # Attributes
///
/// On every variant (or once on the type, as the default for variants that
/// say nothing; on a struct, only there):
///
/// - `#[classify(transient)]`: retried with backoff.
/// - `#[classify(transient, retry_after = "5s")]`: retried no sooner than the
///   given delay.
/// - `#[classify(permanent)]`: dead-lettered without retry.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use backstop::{Classify, HandlerError};
///
/// #[derive(Debug, thiserror::Error, Classify)]
/// enum ShipError {
///     #[error("warehouse unreachable")]
///     #[classify(transient)]
///     Unreachable,
///     #[error("rate limited")]
///     #[classify(transient, retry_after = "5s")]
///     RateLimited,
///     #[error("unknown product {0}")]
///     #[classify(permanent)]
///     UnknownProduct(String),
/// }
///
/// let verdict = HandlerError::from(ShipError::RateLimited);
/// assert!(matches!(verdict, HandlerError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(5)));
/// assert!(HandlerError::from(ShipError::Unreachable).is_transient());
/// assert!(!HandlerError::from(ShipError::UnknownProduct("p-1".into())).is_transient());
/// ```
#[proc_macro_derive(Classify, attributes(classify))]
pub fn derive_classify(input: TokenStream) -> TokenStream {
    expand::derive(input, expand::Derive::Classify)
}
