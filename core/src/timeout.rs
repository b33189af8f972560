//! Per-attempt timeout, reused from tower.
//!
//! tower's `Timeout` erases errors to [`BoxError`]; [`TimeoutLayer`] puts the
//! handler's verdict back: the inner [`HandlerError`] as it was, and an
//! elapsed timer as a transient failure of kind `timeout`.

use std::time::Duration;

use tower::Layer;
use tower::util::MapErrLayer;

use crate::error::{BoxError, HandlerError};

/// tower's timeout with the error mapped back to [`HandlerError`].
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Each attempt may run at most `timeout`.
    pub const fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

/// Maps tower's erased error back to a [`HandlerError`].
pub fn classify(error: BoxError) -> HandlerError {
    match error.downcast::<HandlerError>() {
        Ok(inner) => *inner,
        Err(error) if error.is::<tower::timeout::error::Elapsed>() => HandlerError::timeout(error),
        Err(error) => HandlerError::transient(error),
    }
}

/// Awaits one attempt (`future`) for at most `timeout`: past it the attempt
/// is dropped and fails as a transient timeout, as [`TimeoutLayer`]'s does.
///
/// A combinator rather than an `async fn`, so the attempt's future is stored
/// once.
pub(crate) fn within(
    timeout: Option<Duration>,
    future: impl std::future::Future<Output = Result<(), HandlerError>>,
) -> impl std::future::Future<Output = Result<(), HandlerError>> {
    use futures::FutureExt as _;
    use futures::future::Either;
    match timeout {
        Some(timeout) => Either::Left(tokio::time::timeout(timeout, future).map(|timed| {
            timed.unwrap_or_else(|_| {
                Err(HandlerError::timeout(tower::timeout::error::Elapsed::new()))
            })
        })),
        None => Either::Right(future),
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = tower::util::MapErr<tower::timeout::Timeout<S>, fn(BoxError) -> HandlerError>;

    fn layer(&self, inner: S) -> Self::Service {
        MapErrLayer::new(classify as fn(BoxError) -> HandlerError)
            .layer(tower::timeout::Timeout::new(inner, self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use tower::{Service, ServiceExt, service_fn};

    #[tokio::test(start_paused = true)]
    async fn elapsed_attempt_is_a_transient_timeout() {
        let mut svc =
            TimeoutLayer::new(Duration::from_secs(1)).layer(service_fn(|d: u64| async move {
                tokio::time::sleep(Duration::from_secs(d)).await;
                Ok::<(), HandlerError>(())
            }));
        let err = svc.ready().await.unwrap().call(5).await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(svc.ready().await.unwrap().call(0).await.is_ok());
    }

    #[tokio::test]
    async fn inner_verdict_is_kept() {
        let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(service_fn(|_: ()| async {
            Err::<(), _>(HandlerError::permanent("bad"))
        }));
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }
}
