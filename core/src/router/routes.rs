//! [`Routes`]: a router's handlers, one per payload type, called without boxing.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use futures::future::Either;

use super::Routed;
use crate::context::Context;
use crate::error::HandlerError;
use crate::handler::Handle;
use crate::handler::decode_failure;
use crate::payload::Payload;

/// One route: the handler of payload type `P`.
pub struct Route<P, H> {
    handler: H,
    _payload: PhantomData<fn(P)>,
}

impl<P, H> Route<P, H> {
    pub(crate) fn new(handler: H) -> Self {
        Route {
            handler,
            _payload: PhantomData,
        }
    }

    /// The route's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<P, H> fmt::Debug for Route<P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("payload", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

impl<P: Payload, H: Handle<P>> Route<P, H> {
    /// Decodes the body as `P` (once per message; a body that does not
    /// decode fails as the stack's decode failure does) and runs the handler.
    async fn run(&self, routed: &Routed, ctx: Context) -> Result<(), HandlerError> {
        let payload = routed.decoded::<P>().map_err(|e| decode_failure(&e))?;
        self.handler.handle(payload, ctx).await.map_err(Into::into)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<P, H, R> Sealed for (super::Route<P, H>, R) {}
}

/// The routes of a [`Router`](super::Router): `()` for none, and
/// `(Route<P, H>, R)` for a route in front of the routes `R`, so every
/// handler is called with its own future type, inline, never boxed.
/// Built by [`RouterBuilder::route`](super::RouterBuilder::route); sealed.
pub trait Routes: sealed::Sealed + Send + Sync + 'static {
    /// How many routes.
    const LEN: usize;

    /// Runs route `index` (0 is the route added last) on `routed`.
    fn dispatch(
        &self,
        index: usize,
        routed: &Routed,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl Routes for () {
    const LEN: usize = 0;

    fn dispatch(
        &self,
        index: usize,
        _routed: &Routed,
        _ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        // The router's table holds indexes below `LEN` only.
        std::future::ready(Err(HandlerError::permanent(format!(
            "no route at index {index}"
        ))))
    }
}

impl<P, H, R> Routes for (Route<P, H>, R)
where
    P: Payload,
    H: Handle<P>,
    R: Routes,
{
    const LEN: usize = R::LEN + 1;

    fn dispatch(
        &self,
        index: usize,
        routed: &Routed,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        match index.checked_sub(1) {
            None => Either::Left(self.0.run(routed, ctx)),
            Some(rest) => Either::Right(self.1.dispatch(rest, routed, ctx)),
        }
    }
}
