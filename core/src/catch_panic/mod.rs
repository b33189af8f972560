//! Catch-panic: the innermost layer. A panic in the handler becomes a
//! permanent failure of kind `panic`; it never crashes the runner and is never acked.

mod layer;

pub use self::layer::CatchPanicLayer;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::error::{ErrorKind, HandlerError};

/// A handler panicked.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct Panicked(pub String);

/// Turns panics of the inner service into [`HandlerError::Permanent`] with kind `panic`.
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        CatchPanic { inner }
    }
}

/// The text of a panic's payload (a `&str` or `String` message).
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

pub(crate) fn panic_error(payload: Box<dyn Any + Send>) -> HandlerError {
    HandlerError::permanent_with(ErrorKind::Panic, Panicked(panic_text(&*payload)))
}

/// A future whose panic becomes a permanent `panic` failure; a named type
/// (not `impl Future`), so it borrows nothing from whoever made it.
pub(crate) type Caught<F> = futures::future::Map<
    futures::future::CatchUnwind<AssertUnwindSafe<F>>,
    fn(std::thread::Result<Result<(), HandlerError>>) -> Result<(), HandlerError>,
>;

/// Awaits `future`, turning a panic into a permanent `panic` failure;
/// shared by [`CatchPanic`] and the stack's pipeline. A combinator rather
/// than an `async fn`, so the wrapped future is stored once, not once as an
/// argument and once more as a local.
pub(crate) fn caught<F>(future: F) -> Caught<F>
where
    F: std::future::Future<Output = Result<(), HandlerError>>,
{
    AssertUnwindSafe(future)
        .catch_unwind()
        .map(settle_panic as fn(_) -> _)
}

fn settle_panic(caught: std::thread::Result<Result<(), HandlerError>>) -> Result<(), HandlerError> {
    caught.unwrap_or_else(|payload| Err(panic_error(payload)))
}

/// Calls `call` and awaits the future it makes, turning a panic in either
/// into a permanent `panic` failure.
pub(crate) fn caught_call<Fut>(
    call: impl FnOnce() -> Fut,
) -> futures::future::Either<Caught<Fut>, std::future::Ready<Result<(), HandlerError>>>
where
    Fut: std::future::Future<Output = Result<(), HandlerError>>,
{
    use futures::future::Either;
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(future) => Either::Left(caught(future)),
        Err(payload) => Either::Right(std::future::ready(Err(panic_error(payload)))),
    }
}

impl<S, R> tower::Service<R> for CatchPanic<S>
where
    S: tower::Service<R, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        Box::pin(caught_call(|| self.inner.call(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt, service_fn};

    #[tokio::test]
    async fn panic_in_the_future_is_a_permanent_panic_failure() {
        let mut svc = CatchPanic::new(service_fn(|n: u32| async move {
            if n == 1 {
                panic!("boom {n}");
            }
            Ok::<(), HandlerError>(())
        }));
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panic);
        assert!(!err.is_transient());
        assert!(err.to_string().contains("boom 1"));
        assert!(svc.ready().await.unwrap().call(2).await.is_ok());
    }

    #[tokio::test]
    async fn ok_and_errors_pass_through() {
        let mut svc = CatchPanic::new(service_fn(|n: u32| async move {
            match n {
                0 => Ok(()),
                1 => Err(HandlerError::transient("later")),
                _ => Err(HandlerError::permanent("never")),
            }
        }));
        assert!(svc.ready().await.unwrap().call(0).await.is_ok());
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(1)
                .await
                .unwrap_err()
                .is_transient()
        );
        assert_eq!(
            svc.ready().await.unwrap().call(2).await.unwrap_err().kind(),
            ErrorKind::Permanent
        );
    }
}
