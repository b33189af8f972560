//! Routing by message type: one source, several payload types, each with
//! its own handler ([`Router`]).
//!
//! A router is the handler of a stack of [`Routed`] payloads. For each
//! message it reads the type (by default from [`DEFAULT_TYPE_SOURCES`]:
//! the header `type`, the AMQP `type` property, the CloudEvents header
//! `ce-type`; or from a function of yours), looks its route up in a table
//! built once, decodes the body as that route's payload type and runs the
//! route's handler. What can go wrong keeps the stack's meaning:
//!
//! | Case | Verdict | Dead-lettered as |
//! |---|---|---|
//! | no type, or a type without a route | permanent, nothing runs | `unknown_type` |
//! | a body that does not decode as its route's type | permanent, the handler does not run | `decode` |
//! | the route's handler fails | its own verdict (transient is retried, permanent is not) | its own kind |
//!
//! **Idempotency.** The idempotency key is taken before anything is
//! decoded, so a router cannot use its routes' [`Payload::key`]
//! ([`Routed`] has none): deduplicate a routed stack by
//! [`KeySource::MessageId`](crate::idempotency::KeySource::MessageId) or by a header
//! ([`KeySource::Header`](crate::idempotency::KeySource::Header)).
//! `KeySource::Payload` never deduplicates it.

mod error;
mod routed;
mod routes;
mod type_of;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use self::error::{RouterError, UnknownType};
pub use self::routed::Routed;
pub use self::routes::{Route, Routes};
pub use self::type_of::{DEFAULT_TYPE_SOURCES, TypeSource, message_type};

use self::error::cut;
use self::type_of::TypeFn;
use crate::context::Context;
use crate::error::{ErrorKind, HandlerError};
use crate::handler::Handle;
use crate::message::Message;
use crate::payload::Payload;

/// Bytes of route names an [`UnknownType`] error lists at most (the DLQ
/// keeps 1 KiB of error text).
const KNOWN_BUDGET: usize = 512;
/// Characters of each route name it repeats at most.
const MAX_NAME_CHARS: usize = 64;

/// What an [`UnknownType`] says of a message without a type, by where the router looked.
const DEFAULT_UNTYPED: &str = "message has no type header (looked at header \"type\", the AMQP type property and headers \"ce_type\" and \"ce-type\")";
const CUSTOM_UNTYPED: &str = "message has no type (the router's type function found none)";

/// A handler that runs one of several handlers by the message's type; see
/// the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use backstop::memory::MemoryBroker;
/// use backstop::router::{Routed, Router};
/// use backstop::{handler_fn, wire, Context, HandlerError, KeySource, Message, Runner, StackBuilder};
/// use backstop::idempotency::MemoryStore;
///
/// #[derive(Clone, serde::Deserialize, backstop::Payload)]
/// struct OrderPlaced { order_id: String, amount: i64 }
///
/// #[derive(Clone, serde::Deserialize, backstop::Payload)]
/// struct OrderCancelled { order_id: String }
///
/// async fn place(order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
///     if order.amount < 0 {
///         return Err(HandlerError::permanent("negative amount"));
///     }
///     Ok(())
/// }
///
/// async fn cancel(_order: OrderCancelled, _ctx: Context) -> Result<(), HandlerError> {
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// let event = |ty: &str, body: &str| Message::new(body.to_owned()).with_header("type", ty);
/// broker.publish_now("orders", event("order.placed", r#"{"order_id":"o-1","amount":5}"#))?;
/// broker.publish_now("orders", event("order.cancelled", r#"{"order_id":"o-1"}"#))?;
/// broker.publish_now("orders", event("order.shipped", r#"{"order_id":"o-1"}"#))?;
///
/// let router = Router::builder()
///     .route::<OrderPlaced, _>("order.placed", handler_fn(place))
///     .route::<OrderCancelled, _>("order.cancelled", handler_fn(cancel))
///     .build()?;
/// let stack = StackBuilder::<Routed>::new(Arc::new(broker.dead_letter_sink()))
///     // the routes' payload keys are not known before routing: dedup by message id
///     .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
///     .build(router);
/// let summary = Runner::new(broker.consume("orders", 8).until_drained(), stack).run().await?;
/// assert_eq!((summary.handled, summary.dead_lettered), (2, 1));
/// let letter = &broker.peek("orders.dlq")[0];
/// assert_eq!(letter.header(wire::ERROR_KIND), Some("unknown_type"));
/// # Ok(())
/// # }
/// ```
pub struct Router<R> {
    routes: R,
    table: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    type_of: Option<Box<TypeFn>>,
    /// The route names for [`UnknownType`], written once.
    known: Arc<str>,
}

impl Router<()> {
    /// A router with no routes yet.
    pub fn builder() -> RouterBuilder<()> {
        RouterBuilder {
            routes: (),
            names: Vec::new(),
            type_of: None,
        }
    }
}

impl<R: Routes> Router<R> {
    /// The type of `message` as this router reads it.
    pub fn type_of<'m>(&self, message: &'m Message) -> Option<&'m str> {
        match &self.type_of {
            Some(type_of) => type_of(message).filter(|t| !t.is_empty()),
            None => message_type(message),
        }
    }

    /// The routed type names, in no particular order.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.table.keys().map(|name| &**name)
    }

    /// The routes (the last added first).
    pub fn routes(&self) -> &R {
        &self.routes
    }

    /// The route index of `message`, or its `unknown_type` failure.
    fn route_of(&self, message: &Message) -> Result<usize, HandlerError> {
        let seen = self.type_of(message);
        match seen.and_then(|t| self.table.get(t)) {
            Some(&index) => Ok(index),
            None => {
                let untyped = match self.type_of {
                    Some(_) => CUSTOM_UNTYPED,
                    None => DEFAULT_UNTYPED,
                };
                let unknown = UnknownType::new(seen, untyped, Arc::clone(&self.known));
                Err(HandlerError::permanent_with(
                    ErrorKind::UnknownType,
                    unknown,
                ))
            }
        }
    }
}

impl<R: Routes> Handle<Routed> for Router<R> {
    type Error = HandlerError;

    async fn handle(&self, message: Routed, ctx: Context) -> Result<(), HandlerError> {
        let index = self.route_of(ctx.message())?;
        self.routes.dispatch(index, &message, ctx).await
    }
}

impl<R> fmt::Debug for Router<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("types", &self.known)
            .field("type_from", &self.type_of.as_ref().map(|_| "fn"))
            .finish_non_exhaustive()
    }
}

/// Builds a [`Router`]: its routes and where it reads a message's type.
pub struct RouterBuilder<R> {
    routes: R,
    /// The route names in the order they were added.
    names: Vec<String>,
    type_of: Option<Box<TypeFn>>,
}

impl<R: Routes> RouterBuilder<R> {
    /// Routes messages of type `name` to `handler`, decoded as `P`.
    ///
    /// `P`'s [`Payload::key`], `default_source` and `default_dlq` are not
    /// used: the stack's payload type is [`Routed`].
    #[must_use]
    pub fn route<P, H>(self, name: impl Into<String>, handler: H) -> RouterBuilder<(Route<P, H>, R)>
    where
        P: Payload,
        H: Handle<P>,
    {
        let mut names = self.names;
        names.push(name.into());
        RouterBuilder {
            routes: (Route::new(handler), self.routes),
            names,
            type_of: self.type_of,
        }
    }

    /// Reads a message's type with `type_of` instead of
    /// [`DEFAULT_TYPE_SOURCES`] (an empty type counts as none).
    ///
    /// ```
    /// use backstop::router::Router;
    /// use backstop::{handler_fn, Context, HandlerError, Message};
    ///
    /// async fn any(_body: serde_json::Value, _ctx: Context) -> Result<(), HandlerError> { Ok(()) }
    ///
    /// let router = Router::builder()
    ///     .route::<serde_json::Value, _>("order.placed", handler_fn(any))
    ///     .type_from(|message| message.header("event-type"))
    ///     .build()
    ///     .unwrap();
    /// let message = Message::new("{}").with_header("event-type", "order.placed");
    /// assert_eq!(router.type_of(&message), Some("order.placed"));
    /// ```
    #[must_use]
    pub fn type_from<F>(mut self, type_of: F) -> Self
    where
        F: for<'m> Fn(&'m Message) -> Option<&'m str> + Send + Sync + 'static,
    {
        self.type_of = Some(Box::new(type_of));
        self
    }

    /// The router, or why it cannot be built: a type routed twice, an
    /// empty type name, no routes.
    pub fn build(self) -> Result<Router<R>, RouterError> {
        if self.names.is_empty() {
            return Err(RouterError::NoRoutes);
        }
        let mut table = HashMap::with_capacity_and_hasher(self.names.len(), Default::default());
        debug_assert_eq!(R::LEN, self.names.len(), "one name per route");
        let last = self.names.len() - 1;
        for (added, name) in self.names.iter().enumerate() {
            if name.is_empty() {
                return Err(RouterError::EmptyName);
            }
            // `route` puts each new route in front: the last added is index 0.
            if table
                .insert(Box::from(name.as_str()), last - added)
                .is_some()
            {
                return Err(RouterError::DuplicateRoute { name: name.clone() });
            }
        }
        Ok(Router {
            routes: self.routes,
            table,
            type_of: self.type_of,
            known: known(&self.names).into(),
        })
    }
}

impl<R> fmt::Debug for RouterBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("types", &self.names)
            .field("type_from", &self.type_of.as_ref().map(|_| "fn"))
            .finish()
    }
}

/// `"a", "b" and 3 more`: the route names, within [`KNOWN_BUDGET`] bytes.
fn known(names: &[String]) -> String {
    let mut text = String::new();
    for (listed, name) in names.iter().enumerate() {
        let quoted = format!("{:?}", cut(name, MAX_NAME_CHARS));
        if listed > 0 && text.len() + quoted.len() + 2 > KNOWN_BUDGET {
            text.push_str(&format!(" and {} more", names.len() - listed));
            break;
        }
        if listed > 0 {
            text.push_str(", ");
        }
        text.push_str(&quoted);
    }
    text
}
