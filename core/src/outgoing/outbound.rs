//! [`Outbound`]: the place one attempt publishes to, which names what it
//! publishes; and [`Context::publish`], which finds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{CAUSED_BY, Outgoing, PublishFailed};
use crate::context::Context;
use crate::message::Message;

/// The place one attempt publishes to, as put into its extensions by a
/// wrapper; [`Context::publish`] finds it there. It names the published
/// messages (see the [module docs](super)).
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

    /// Names `message` (see the [module docs](super)) and hands it to the
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
    /// [`PublishLayer`](super::PublishLayer), or in the inbox's transaction with the PostgreSQL
    /// outbox. Its message id is derived from the handled message's (the
    /// same on every attempt). Errors convert into [`HandlerError`](crate::error::HandlerError) with `?`.
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
