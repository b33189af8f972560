//! [`PublishLayer`] and its service: an [`Outbound`] put into each attempt.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tower::{Layer, Service};

use super::{Outbound, Outgoing, confirmed};
use crate::error::HandlerError;
use crate::publish::Publisher;
use crate::request::Request;

/// Lets handlers publish at once through a confirmed [`Publisher`]; see
/// the [module docs](super). Goes around each attempt
/// ([`StackBuilder::around_attempt`](crate::stack::StackBuilder::around_attempt)).
#[derive(Clone)]
pub struct PublishLayer {
    to: Arc<dyn Outgoing>,
}

impl std::fmt::Debug for PublishLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishLayer").finish_non_exhaustive()
    }
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
