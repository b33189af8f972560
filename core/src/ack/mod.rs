//! Settlement: the outermost layer acks every [`Outcome`] and nacks every
//! error with requeue, after a jittered backoff so a failing message never
//! spins in a hot loop.
//!
//! With a postponing sink ([`AckLayer::postpone_through`], the RabbitMQ
//! retry sink on a quorum queue) an error that spends no attempt (an outage,
//! a key busy elsewhere: [`Error::postpones`]) is not nacked: a confirmed
//! copy with the same attempt count goes to the delay queue, then the
//! original is acked ([`Settled::Postponed`]). A requeueing nack would spend
//! the quorum queue's delivery count, and after `x-delivery-limit` the
//! broker would dead-letter a healthy message. A delivery with a
//! [deadline](crate::delivery::Delivery::deadline) (RabbitMQ's consumer timeout less
//! a margin) is postponed the same way if it is still unsettled then: the
//! handler's token fires, a run still going after the nack delay more is
//! dropped (its lease released, no attempt counted), and the message goes
//! to the delay queue before the broker closes the channel.

mod layer;
mod postpone;

pub use self::layer::AckLayer;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tower::Service;

use self::postpone::Postponer;
use crate::cancellation::{Cancellation, Tripwire, Wired};
use crate::delivery::{AckHandle, Delivery, Received};
use crate::error::{AckError, Error};
use crate::lifecycle;
use crate::outcome::Outcome;
use crate::retry::RetrySink;

/// How a delivery was settled.
#[derive(Debug)]
pub enum Settled {
    /// Acked with this outcome.
    Acked(Outcome),
    /// Nacked with requeue because of this error; the broker redelivers it.
    Nacked(Error),
    /// Postponed because of this error (an outage, a busy key, the
    /// unacked-time budget): a confirmed copy with the same attempt count
    /// went to the delay queue, then the original was acked.
    Postponed(Error),
}

/// The ack service; see the [module docs](self).
#[derive(Clone)]
pub struct Ack<S> {
    inner: S,
    nack_delay: Duration,
    postpone: Option<Arc<dyn RetrySink>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Ack<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("inner", &self.inner)
            .field("nack_delay", &self.nack_delay)
            .field("postpone", &self.postpone.is_some())
            .finish()
    }
}

impl<S> Ack<S> {
    /// Settles `inner`'s results; errors wait about `nack_delay` before the nack.
    pub const fn new(inner: S, nack_delay: Duration) -> Self {
        Ack {
            inner,
            nack_delay,
            postpone: None,
        }
    }

    /// Postpones errors that spend no attempt through `sink` instead of
    /// nacking them (see the [module docs](self)).
    #[must_use]
    pub fn postpone_through(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.postpone = Some(sink);
        self
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
        match start(delivery, self.postpone.as_ref(), self.nack_delay) {
            Start::Postpone(postponing) => Box::pin(postponing.settle()),
            Start::Run(received, running) => {
                let future = self.inner.call(received);
                Box::pin(running.finish(move || future))
            }
        }
    }
}

/// A delivery taken apart for its run; see [`start`].
pub(crate) enum Start {
    /// Settle without running (the runner stopped consuming).
    Postpone(Postponing),
    /// Run the [`Received`] message, then settle by its result with
    /// [`Running::finish`].
    Run(Received, Running),
}

/// A delivery to postpone without running.
pub(crate) struct Postponing {
    postponer: Postponer,
    acker: AckHandle,
}

impl Postponing {
    /// Postpones it through the delay queue, or nacks it.
    pub(crate) async fn settle(self) -> Result<Settled, AckError> {
        self.postponer
            .settle(
                self.acker,
                Error::Unavailable("consumption is paused; the message was not run".into()),
            )
            .await
    }
}

/// What settling a running delivery needs.
pub(crate) struct Running {
    acker: AckHandle,
    postponer: Postponer,
    fence: Option<Arc<CancellationToken>>,
    deadline: Option<tokio::time::Instant>,
    /// Cancels this delivery alone (its fence or its deadline), when it has one.
    trip: Option<Arc<Tripwire>>,
    shutdown: Arc<CancellationToken>,
    nack_delay: Duration,
}

/// Takes `delivery` apart for its run (postponing through `postpone` when
/// given, nacking after about `nack_delay` otherwise); shared by [`Ack`] and
/// the stack's pipeline.
pub(crate) fn start(
    mut delivery: Delivery,
    postpone: Option<&Arc<dyn RetrySink>>,
    nack_delay: Duration,
) -> Start {
    let fence = delivery.take_shared_fence();
    let transaction = delivery.take_transaction();
    let deadline = delivery.deadline();
    let postpone_now = delivery.is_postponed();
    let (message, acker, shutdown) = delivery.into_shared_parts();
    let traced = lifecycle::received(&message.meta);
    let postponer = Postponer::new(postpone, &message, traced, nack_delay);
    if postpone_now {
        return Start::Postpone(Postponing { postponer, acker });
    }
    // The handler's cancellation: fires on shutdown, and (through a
    // tripwire) when the source cancels the fence or at the delivery's
    // deadline. Without a fence or a deadline it is the shared shutdown
    // token alone: nothing to make.
    let mut cancel = Cancellation::shared(Arc::clone(&shutdown));
    let trip = (fence.is_some() || deadline.is_some()).then(|| Arc::new(Tripwire::within(None)));
    if let Some(trip) = &trip {
        cancel.tripped_by(Arc::clone(trip) as Arc<dyn Wired>);
    }
    let received = Received {
        message,
        cancel,
        deadline,
        transaction,
    };
    Start::Run(
        received,
        Running {
            acker,
            postponer,
            fence,
            deadline,
            trip,
            shutdown,
            nack_delay,
        },
    )
}

impl Running {
    /// Awaits the run (the future `run` makes, here, so it is stored once)
    /// and settles the delivery by its result.
    ///
    /// Not an `async fn`: the future it returns holds this delivery's
    /// parts once (an `async fn` keeps its arguments beside its locals),
    /// and the rare endings (postponing, a nack after its delay, the
    /// unacked-time budget's grace) are boxed where they start, so the
    /// message's future is no bigger for them.
    pub(crate) fn finish<Fut>(
        self,
        run: impl FnOnce() -> Fut,
    ) -> impl std::future::Future<Output = Result<Settled, AckError>>
    where
        Fut: std::future::Future<Output = Result<Outcome, Error>>,
    {
        let Running {
            acker,
            postponer,
            fence,
            deadline,
            trip,
            shutdown,
            nack_delay,
        } = self;
        async move {
            let fenced = async {
                match &fence {
                    Some(fence) => fence.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let timed_out = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let mut out_of_time = false;
            // The run's future is dropped at the end of this block, before
            // the delivery is settled: its span closes when the run ends,
            // and a run dropped after the grace releases its lease before
            // the postponed copy can be consumed.
            let result = {
                let mut future = std::pin::pin!(run());
                tokio::select! {
                    biased;
                    result = &mut future => result,
                    () = fenced => {
                        trip.iter().for_each(|trip| trip.fire());
                        future.await
                    }
                    () = timed_out => {
                        tracing::warn!("a delivery reached its unacked-time budget; postponing it through the broker");
                        out_of_time = true;
                        trip.iter().for_each(|trip| trip.fire());
                        // A run that ignores its token (or waits on a store that
                        // is down) is dropped after the grace: dropping releases
                        // its idempotency lease without counting an attempt.
                        match Box::pin(tokio::time::timeout(nack_delay, &mut future)).await {
                            Ok(result) => result,
                            Err(_) => Err(Error::Shutdown),
                        }
                    }
                }
            };
            match result {
                Ok(outcome) => {
                    acker.ack().await?;
                    lifecycle::acked(postponer.message(), &outcome);
                    Ok(Settled::Acked(outcome))
                }
                Err(error) => {
                    Box::pin(unsettled(
                        acker,
                        postponer,
                        error,
                        out_of_time,
                        &shutdown,
                        nack_delay,
                    ))
                    .await
                }
            }
        }
    }
}

/// Settles a delivery whose run ended in `error`: postponed through the
/// broker (when out of time, or when the error postpones and there is a
/// sink), else nacked (requeued) after about `nack_delay`.
async fn unsettled(
    acker: AckHandle,
    postponer: Postponer,
    error: Error,
    out_of_time: bool,
    shutdown: &CancellationToken,
    nack_delay: Duration,
) -> Result<Settled, AckError> {
    if out_of_time || (postponer.has_sink() && error.postpones()) {
        return postponer.settle(acker, error).await;
    }
    if !shutdown.is_cancelled() {
        tokio::time::sleep(crate::retry::equal_jitter(nack_delay)).await;
    }
    acker.nack(true).await?;
    lifecycle::nacked(postponer.message(), &error);
    Ok(Settled::Nacked(error))
}

#[cfg(test)]
mod tests;
