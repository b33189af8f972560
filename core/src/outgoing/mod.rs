//! Publishing from a handler: [`Context::publish`] and the back-ends behind it.
//!
//! A handler that emits messages of its own ("order placed" after placing an
//! order) calls [`Context::publish`]. Where the message goes is decided by
//! the stack, not the handler: a wrapper around each attempt puts an
//! [`Outbound`] into the attempt's [`Extensions`](crate::Extensions).
//!
//! - [`PublishLayer`] (here) publishes at once through a confirmed
//!   [`Publisher`]: the call returns after the broker's confirm. An attempt
//!   that fails after publishing has published anyway, so a retry publishes
//!   again (same message id, see below): at-least-once.
//! - The PostgreSQL outbox (`backstop_postgres::Outbox`, with the inbox)
//!   writes the message into the attempt's transaction: it exists only if
//!   the handler's effects commit, and a relay sends it afterwards.
//!
//! [`Context::publish`] gives each message an id derived from the message
//! being handled, its place among this attempt's publishes and the
//! consumer's keyspace (`<keyspace>:<message id>:out:<n>`, the keyspace
//! naming the queue or topic, the Kafka group and the service if any, as
//! idempotency keys do: two consumers of one message never publish the
//! same id), so a retried attempt publishes
//! the same ids and a consumer with idempotency keyed by message id sees
//! each once
//! ([`Context::publish_keeping_id`] keeps the id you set instead: keep it
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll};

use tower::{Layer, Service};

use crate::Message;
use crate::context::Context;
use crate::error::{BoxError, HandlerError};
use crate::publish::{PublishError, Publisher};
use crate::request::Request;

/// The header naming the message whose handler published this one.
pub const CAUSED_BY: &str = "x-backstop-caused-by";

/// Where the messages a handler publishes go: a broker at once, or a
/// transaction's outbox. Implemented by back-ends; handlers call
/// [`Context::publish`].
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

/// The place one attempt publishes to, as put into its extensions by a
/// wrapper; [`Context::publish`] finds it there. It names the published
/// messages (see the [module docs](self)).
///
/// Built once per attempt, it only shares the handled message: the names
/// are worked out when something is published, so an attempt that
/// publishes nothing costs no allocation beyond this value.
pub struct Outbound {
    to: Arc<dyn Outgoing>,
    handled: Arc<Message>,
    service: Option<Arc<str>>,
    next: AtomicU32,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("cause", &self.handled.meta.message_id)
            .field("published", &self.next.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// The publishing place of one attempt at `handled`, through `to`.
    pub fn new(to: Arc<dyn Outgoing>, handled: &Arc<Message>) -> Self {
        Outbound::for_service(to, handled, None)
    }

    /// As [`new`](Self::new), for a consumer that adds `service` to its
    /// keyspace (the derived ids name it).
    pub fn for_service(
        to: Arc<dyn Outgoing>,
        handled: &Arc<Message>,
        service: Option<Arc<str>>,
    ) -> Self {
        Outbound {
            to,
            handled: Arc::clone(handled),
            service,
            next: AtomicU32::new(0),
        }
    }

    /// Names `message` (see the [module docs](self)) and hands it to the
    /// back-end; with `keep_id` its own message id is kept.
    pub async fn publish(
        &self,
        destination: &str,
        mut message: Message,
        keep_id: bool,
    ) -> Result<(), PublishFailed> {
        if destination.is_empty() {
            return Err(PublishFailed::NoDestination);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let cause = self.handled.meta.message_id.as_str();
        if !keep_id && !cause.is_empty() {
            let scope =
                crate::idempotency::Keyspace::of(&self.handled.meta, self.service.as_deref());
            message.meta.message_id = format!("{}:{cause}:out:{n}", scope.as_str());
            message.headers.remove(crate::wire::MESSAGE_ID);
        } else if message.meta.message_id.is_empty() {
            message.meta.message_id = message.id_for_publish();
        }
        if !cause.is_empty() && !message.headers.contains_key(CAUSED_BY) {
            message.headers.insert(CAUSED_BY, cause);
        }
        self.to.publish(destination, message).await
    }
}

impl Context {
    /// Publishes `message` to `destination` through the stack's back-end
    /// (see [`outgoing`](crate::outgoing)): at once and confirmed with a
    /// [`PublishLayer`], or in the inbox's transaction with the PostgreSQL
    /// outbox. Its message id is derived from the handled message's (the
    /// same on every attempt). Errors convert into [`HandlerError`] with `?`.
    pub async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        match self.extension::<Outbound>() {
            Some(outbound) => outbound.publish(destination, message, false).await,
            None => Err(PublishFailed::NoPublisher),
        }
    }

    /// As [`publish`](Self::publish), keeping the message id `message`
    /// carries: choose one that is the same on every attempt (a business
    /// key), or consumers cannot suppress the copies a retry publishes.
    pub async fn publish_keeping_id(
        &self,
        destination: &str,
        message: Message,
    ) -> Result<(), PublishFailed> {
        match self.extension::<Outbound>() {
            Some(outbound) => outbound.publish(destination, message, true).await,
            None => Err(PublishFailed::NoPublisher),
        }
    }
}

/// Lets handlers publish at once through a confirmed [`Publisher`]; see
/// the [module docs](self). Goes around each attempt
/// ([`StackBuilder::around_attempt`](crate::StackBuilder::around_attempt)).
#[derive(Clone)]
pub struct PublishLayer {
    to: Arc<dyn Outgoing>,
}

impl std::fmt::Debug for PublishLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishLayer").finish_non_exhaustive()
    }
}

/// A [`Publisher`] as a back-end.
struct Direct<P>(P);

#[async_trait::async_trait]
impl<P: Publisher> Outgoing for Direct<P> {
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        self.0
            .publish(destination, &message)
            .await
            .map_err(|source| PublishFailed::Publish {
                destination: destination.to_owned(),
                source,
            })
    }
}

/// A back-end that keeps what one attempt publishes, for a wrapper that
/// decides afterwards where it goes (into a source's transaction once the
/// attempt succeeded; nowhere if it failed).
#[derive(Debug, Default)]
pub struct Collected(std::sync::Mutex<Vec<(String, Message)>>);

impl Collected {
    /// Takes what was published so far, `(destination, message)` in order.
    pub fn take(&self) -> Vec<(String, Message)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl Outgoing for Collected {
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((destination.to_owned(), message));
        Ok(())
    }
}

/// A confirmed [`Publisher`] as a back-end: each publish returns after the
/// broker's confirm (what [`PublishLayer::new`] uses).
pub fn confirmed(publisher: impl Publisher) -> Arc<dyn Outgoing> {
    Arc::new(Direct(publisher))
}

impl PublishLayer {
    /// Publishes through `publisher`.
    pub fn new(publisher: impl Publisher) -> Self {
        PublishLayer::to(confirmed(publisher))
    }

    /// Publishes through any back-end.
    pub fn to(back_end: Arc<dyn Outgoing>) -> Self {
        PublishLayer { to: back_end }
    }
}

impl<S> Layer<S> for PublishLayer {
    type Service = PublishService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PublishService {
            inner,
            to: Arc::clone(&self.to),
        }
    }
}

/// Puts an [`Outbound`] into each attempt; see [`PublishLayer`].
#[derive(Clone)]
pub struct PublishService<S> {
    inner: S,
    to: Arc<dyn Outgoing>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for PublishService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Request<T>> for PublishService<S>
where
    S: Service<Request<T>, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let outbound = Outbound::new(Arc::clone(&self.to), request.message_arc());
        request.extensions.insert(outbound);
        self.inner.call(request)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_derived_from_the_cause_and_kept_when_given() {
        let recorder = Arc::new(Collected::default());
        let mut inbound = Message::new("x").with_message_id("in-7");
        inbound.meta.source = "orders".into();
        let inbound = Arc::new(inbound);
        let outbound = Outbound::new(recorder.clone(), &inbound);
        outbound
            .publish("a", Message::new("1"), false)
            .await
            .expect("published");
        outbound
            .publish("a", Message::new("2").with_message_id("mine"), true)
            .await
            .expect("published");
        outbound
            .publish("b", Message::new("3"), false)
            .await
            .expect("published");
        assert!(matches!(
            outbound.publish("", Message::new("4"), false).await,
            Err(PublishFailed::NoDestination)
        ));
        {
            let seen = recorder.take();
            let ids: Vec<&str> = seen
                .iter()
                .map(|(_, m)| m.meta.message_id.as_str())
                .collect();
            assert_eq!(ids, ["orders:in-7:out:0", "mine", "orders:in-7:out:2"]);
            assert!(
                seen.iter()
                    .all(|(_, m)| m.header(CAUSED_BY) == Some("in-7"))
            );
        }
        // A second attempt names its publishes the same way.
        let again = Outbound::new(recorder.clone(), &inbound);
        again
            .publish("a", Message::new("1"), false)
            .await
            .expect("published");
        assert_eq!(recorder.take()[0].1.meta.message_id, "orders:in-7:out:0");
        // Another consumer of the same message publishes other ids.
        let mut elsewhere = (*inbound).clone();
        elsewhere.meta.source = "audit".into();
        let other = Outbound::for_service(
            recorder.clone(),
            &Arc::new(elsewhere),
            Some("billing".into()),
        );
        other
            .publish("a", Message::new("1"), false)
            .await
            .expect("published");
        assert_eq!(
            recorder.take()[0].1.meta.message_id,
            "billing@audit:in-7:out:0"
        );
    }

    #[test]
    fn without_a_back_end_the_error_is_permanent_and_says_what_to_add() {
        let error = PublishFailed::NoPublisher;
        assert!(error.is_permanent());
        assert!(error.to_string().contains("PublishLayer"));
        let transient = PublishFailed::Publish {
            destination: "x".into(),
            source: PublishError::Nacked,
        };
        assert!(!transient.is_permanent());
    }
}
