//! [`Erased`]: a cloneable, type-erased service for the stack's boundaries.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

/// A cloneable, type-erased service whose future is already a [`BoxFuture`]:
/// unlike tower's `BoxCloneSyncService`, erasing it does not box each future
/// a second time (one allocation per message and layer boundary saved).
pub(super) struct Erased<Req, Resp, Err> {
    inner: Box<dyn ErasedService<Req, Resp, Err>>,
}

trait ErasedService<Req, Resp, Err>: Send + Sync {
    fn poll_ready_erased(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Err>>;
    fn call_erased(&mut self, request: Req) -> BoxFuture<'static, Result<Resp, Err>>;
    fn clone_box(&self) -> Box<dyn ErasedService<Req, Resp, Err>>;
}

impl<S, Req, Resp, Err> ErasedService<Req, Resp, Err> for S
where
    S: Service<Req, Response = Resp, Error = Err, Future = BoxFuture<'static, Result<Resp, Err>>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    fn poll_ready_erased(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Err>> {
        self.poll_ready(cx)
    }

    fn call_erased(&mut self, request: Req) -> BoxFuture<'static, Result<Resp, Err>> {
        self.call(request)
    }

    fn clone_box(&self) -> Box<dyn ErasedService<Req, Resp, Err>> {
        Box::new(self.clone())
    }
}

impl<Req: 'static, Resp: 'static, Err: 'static> Erased<Req, Resp, Err> {
    /// Erases a service whose future is already boxed.
    pub(super) fn new<S>(service: S) -> Self
    where
        S: Service<
                Req,
                Response = Resp,
                Error = Err,
                Future = BoxFuture<'static, Result<Resp, Err>>,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        Erased {
            inner: Box::new(service),
        }
    }

    /// Erases any service, boxing its futures.
    pub(super) fn boxing<S>(service: S) -> Self
    where
        S: Service<Req, Response = Resp, Error = Err> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self::new(service.map_future(|future| Box::pin(future) as BoxFuture<'static, _>))
    }
}

impl<Req, Resp, Err> Clone for Erased<Req, Resp, Err> {
    fn clone(&self) -> Self {
        Erased {
            inner: self.inner.clone_box(),
        }
    }
}

impl<Req, Resp, Err> Service<Req> for Erased<Req, Resp, Err> {
    type Response = Resp;
    type Error = Err;
    type Future = BoxFuture<'static, Result<Resp, Err>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Err>> {
        self.inner.poll_ready_erased(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.inner.call_erased(request)
    }
}
