//! Bounded retry of transient failures, with exponential backoff and full jitter.
//!
//! [`Retry`] runs the inner service (timeout, catch-panic, handler) until it
//! succeeds, fails permanently, or the attempts or the elapsed budget run
//! out. Short delays are slept in process; longer ones are handed to a
//! [`RetrySink`] and the message yields [`Outcome::Deferred`]. Its error is
//! [`Error::Failed`] for the dead-letter layer, or [`Error::Retry`] when the
//! republish was not confirmed.

mod layer;
mod policy;
mod sink;

pub use self::layer::RetryLayer;
pub use self::policy::{MAX_RETRY_AFTER, RetryPolicy, equal_jitter};
pub use self::sink::RetrySink;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::{Error, Failure, HandlerError, Outcome, Request, attempt, copy, error, wire};

/// The retry service; see the [module docs](self).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    sink: Option<Arc<dyn RetrySink>>,
}

impl<S> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("sink", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Retry<S> {
    /// Retries `inner` by `policy`, with long delays through `sink` when given.
    pub fn new(inner: S, policy: RetryPolicy, sink: Option<Arc<dyn RetrySink>>) -> Self {
        Retry {
            inner,
            policy: Arc::new(policy),
            sink,
        }
    }
}

fn exhausted_on_arrival(request_attempt: u32, max: u32) -> Failure {
    let now = SystemTime::now();
    Failure {
        kind: crate::ErrorKind::Exhausted,
        message: format!(
            "attempt {request_attempt} exceeds the maximum of {max} attempts (counted across deliveries)"
        ),
        attempts: request_attempt.saturating_sub(1),
        first_failure: now,
        last_failure: now,
    }
}

impl<S, T> Service<Request<T>> for Retry<S>
where
    S: Service<Request<T>, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    T: Send + Sync + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let mut inner = self.inner.clone();
        let policy = Arc::clone(&self.policy);
        let sink = self.sink.clone();
        Box::pin(async move {
            let max = policy.max_attempts;
            let mut attempt = request.attempt();
            if attempt > max {
                return Err(Error::Failed(exhausted_on_arrival(attempt, max)));
            }
            let started = tokio::time::Instant::now();
            let mut first_failure = request
                .message()
                .header(wire::FIRST_FAILURE)
                .and_then(wire::parse_time);
            let before = first_failure
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            loop {
                request.set_attempt(attempt);
                let result = match inner.ready().await {
                    Ok(svc) => svc.call(request.clone()).await,
                    Err(e) => Err(e),
                };
                let error = match result {
                    Ok(()) => return Ok(Outcome::Handled),
                    Err(error) => error,
                };
                let error = match error {
                    HandlerError::Unavailable { source } => return Err(Error::Unavailable(source)),
                    other => other,
                };
                let now = SystemTime::now();
                let first = *first_failure.get_or_insert(now);
                let failure = |kind| Failure {
                    kind,
                    message: error::chain(&error),
                    attempts: attempt,
                    first_failure: first,
                    last_failure: now,
                };
                let HandlerError::Transient {
                    retry_after, kind, ..
                } = &error
                else {
                    tracing::debug!(attempt, error = %error, "permanent failure");
                    return Err(Error::Failed(failure(error.kind())));
                };
                if request.cancellation().is_cancelled() {
                    return Err(Error::Shutdown);
                }
                if attempt::is_exhausted(attempt, max) {
                    return Err(Error::Failed(failure(*kind)));
                }
                let delay = retry_after
                    .map_or_else(|| policy.delay(attempt), |after| after.min(MAX_RETRY_AFTER));
                if policy
                    .max_elapsed
                    .is_some_and(|budget| before + started.elapsed() + delay > budget)
                {
                    return Err(Error::Failed(failure(*kind)));
                }
                tracing::debug!(attempt, ?delay, error = %error, "transient failure, retrying");
                match &sink {
                    Some(sink) if delay > policy.in_process_limit => {
                        let due = now + delay;
                        let copy = copy::retry(request.message(), attempt + 1, due, first);
                        sink.retry_later(copy, delay)
                            .await
                            .map_err(|source| Error::Retry {
                                source,
                                attempts: attempt,
                            })?;
                        return Ok(Outcome::Deferred {
                            attempt: attempt + 1,
                            due,
                        });
                    }
                    _ => tokio::time::sleep(delay).await,
                }
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests;
