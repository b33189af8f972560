//! Settlement: the outermost layer acks every [`Outcome`] and nacks every
//! error with requeue, after a jittered backoff so a failing message never
//! spins in a hot loop.

mod layer;

pub use self::layer::AckLayer;

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::Service;

use crate::{AckError, Delivery, Error, Outcome, Received};

/// How a delivery was settled.
#[derive(Debug)]
pub enum Settled {
    /// Acked with this outcome.
    Acked(Outcome),
    /// Nacked with requeue because of this error; the broker redelivers it.
    Nacked(Error),
}

/// The ack service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Ack<S> {
    inner: S,
    nack_delay: Duration,
}

impl<S> Ack<S> {
    /// Settles `inner`'s results; errors wait about `nack_delay` before the nack.
    pub const fn new(inner: S, nack_delay: Duration) -> Self {
        Ack { inner, nack_delay }
    }
}

impl<S> Service<Delivery> for Ack<S>
where
    S: Service<Received, Response = Outcome, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Settled;
    type Error = AckError;
    type Future = BoxFuture<'static, Result<Settled, AckError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AckError>> {
        // The inner stack's readiness errors are settlement errors of no delivery yet.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(AckError::Broker(Box::new(error)))),
            other => other.map(|_| Ok(())),
        }
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let (message, acker, cancel) = delivery.into_parts();
        let shutdown = cancel.clone();
        let future = self.inner.call(Received { message, cancel });
        let nack_delay = self.nack_delay;
        Box::pin(async move {
            match future.await {
                Ok(outcome) => {
                    acker.ack().await?;
                    Ok(Settled::Acked(outcome))
                }
                Err(error) => {
                    if !shutdown.is_cancelled() {
                        tokio::time::sleep(crate::retry::equal_jitter(nack_delay)).await;
                    }
                    acker.nack(true).await?;
                    Ok(Settled::Nacked(error))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
