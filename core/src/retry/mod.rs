//! Bounded retry of transient failures, with exponential backoff and full jitter.
//!
//! [`Retry`] runs the inner service (timeout, catch-panic, handler) until it
//! succeeds, fails permanently, or the attempts or the elapsed budget run
//! out. Short delays are slept in process; longer ones are handed to a
//! [`RetrySink`] and the message yields [`Outcome::Deferred`]. Its error is
//! [`Error::Failed`] for the dead-letter layer, or [`Error::Retry`] when the
//! republish was not confirmed. A republish that can never succeed
//! ([`SinkError::is_permanent`](crate::error::SinkError::is_permanent): the delay
//! queue or retry topic is missing, refuses the copy's size, or the sink
//! cannot serve the message) is not retried forever: the message is
//! dead-lettered with its failure and the sink's error in the letter's text.

mod backoff;
mod layer;
mod policy;
mod sink;
mod tier;

pub use self::backoff::Backoff;
pub use self::layer::RetryLayer;
pub use self::policy::{MAX_RETRY_AFTER, RetryPolicy, equal_jitter};
pub use self::sink::RetrySink;
pub use self::tier::tier_name;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::at_once::{self, AtOnce};
use crate::error::{Error, Failure, HandlerError};
use crate::outcome::Outcome;
use crate::request::Request;
use crate::transaction::InTransaction;
use crate::{attempt, copy, error, wire};

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

/// The failure of a delivery whose attempts were spent before it arrived:
/// `crashed` if its last run ended without a result (a suspect, see
/// [`idempotency`](crate::idempotency)), else `exhausted`.
fn exhausted_on_arrival(request_attempt: u32, max: u32, suspect: bool) -> Failure {
    let now = SystemTime::now();
    let (kind, message) = if suspect {
        (
            crate::error::ErrorKind::Crashed,
            format!(
                "attempt {request_attempt} exceeds the maximum of {max} attempts and the last run ended without a result (the process died or hung past its lease); not run again"
            ),
        )
    } else {
        (
            crate::error::ErrorKind::Exhausted,
            format!(
                "attempt {request_attempt} exceeds the maximum of {max} attempts (counted across deliveries)"
            ),
        )
    };
    Failure {
        kind,
        message,
        attempts: request_attempt.saturating_sub(1),
        first_failure: now,
        last_failure: now,
    }
}

impl<S, T> Service<Request<T>> for Retry<S>
where
    S: Service<Request<T>, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let inner = self.inner.clone();
        let policy = Arc::clone(&self.policy);
        let sink = self.sink.clone();
        Box::pin(async move {
            let mut request = request;
            let mut retrying = Retrying::start(&policy, sink.as_ref(), &mut request)?;
            loop {
                // Each attempt's service takes its own copy of the request.
                let result = inner.clone().oneshot(request.clone()).await;
                if let Some(end) = retrying.after(&mut request, result).await {
                    return end;
                }
            }
        })
    }
}

/// A message's way through its attempts: [`start`](Retrying::start) admits
/// it, then the caller runs an attempt on the request and hands the result
/// to [`after`](Retrying::after), again and again until `after` answers
/// with the message's end. The caller lends the request to each attempt:
/// the pipeline's attempts borrow it, and a caller whose attempt takes a
/// request by value (the [`Retry`] service's inner service) clones it.
/// Shared by [`Retry`] and the stack's pipeline; see the [module docs](self).
pub(crate) struct Retrying<'a> {
    policy: &'a RetryPolicy,
    sink: Option<&'a Arc<dyn RetrySink>>,
    attempt: u32,
    started: tokio::time::Instant,
    first_failure: Option<SystemTime>,
    /// How long the failures before this delivery took (from its header).
    before: std::time::Duration,
}

impl<'a> Retrying<'a> {
    /// Admits `request` (an attempt count past the policy's is refused at
    /// once) and sets it up for its first attempt here.
    pub(crate) fn start<T>(
        policy: &'a RetryPolicy,
        sink: Option<&'a Arc<dyn RetrySink>>,
        request: &mut Request<T>,
    ) -> Result<Self, Error> {
        let max = policy.max_attempts;
        let attempt = match attempt::admit(request.attempt(), request.confirmed_attempt(), max) {
            Ok(attempt) => attempt,
            Err(confirmed) => {
                let suspect = request
                    .extensions
                    .get::<crate::idempotency::Suspect>()
                    .is_some();
                return Err(Error::Failed(exhausted_on_arrival(confirmed, max, suspect)));
            }
        };
        let first_failure = request
            .message()
            .header(wire::FIRST_FAILURE)
            .and_then(wire::parse_time);
        let before = first_failure
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let retrying = Retrying {
            policy,
            sink,
            attempt,
            started: tokio::time::Instant::now(),
            first_failure,
            before,
        };
        retrying.begin(request);
        Ok(retrying)
    }

    /// Sets `request` up for the attempt about to run.
    fn begin<T>(&self, request: &mut Request<T>) {
        request.set_attempt(self.attempt);
        crate::lifecycle::attempt_started(&request.message().meta, self.attempt);
    }

    /// Takes the result of the attempt that just ran on `request`: `None`
    /// when another attempt is to run now (after the policy's wait, with
    /// `request` set up for it), else the message's end.
    ///
    /// A success ends the message at once, without a future of its own; a
    /// failure's future (its wait, or its copy written to the retry sink) is
    /// boxed, so the caller's future is no bigger for the rare path.
    pub(crate) fn after<'s, T: Send + Sync>(
        &'s mut self,
        request: &'s mut Request<T>,
        result: Result<(), HandlerError>,
    ) -> AtOnce<'s, Option<Result<Outcome, Error>>> {
        match result {
            Ok(()) => at_once::now(Some(Ok(Outcome::Handled))),
            Err(error) => at_once::later(async move {
                let end = self.wait(request, error).await;
                if end.is_none() {
                    self.attempt += 1;
                    self.begin(request);
                }
                end
            }),
        }
    }

    async fn wait<T>(
        &mut self,
        request: &Request<T>,
        error: HandlerError,
    ) -> Option<Result<Outcome, Error>> {
        let (policy, attempt) = (self.policy, self.attempt);
        crate::lifecycle::attempt_failed(&request.message().meta, attempt, &error);
        let error = match error {
            HandlerError::Unavailable { source } => return Some(Err(Error::Unavailable(source))),
            other => other,
        };
        let now = SystemTime::now();
        let first = *self.first_failure.get_or_insert(now);
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
            return Some(Err(Error::Failed(failure(error.kind()))));
        };
        if request.is_cancelled() {
            return Some(Err(Error::Shutdown));
        }
        if attempt::is_exhausted(attempt, policy.max_attempts) {
            return Some(Err(Error::Failed(failure(*kind))));
        }
        let delay =
            retry_after.map_or_else(|| policy.delay(attempt), |after| after.min(MAX_RETRY_AFTER));
        if policy
            .max_elapsed
            .is_some_and(|budget| self.before + self.started.elapsed() + delay > budget)
        {
            return Some(Err(Error::Failed(failure(*kind))));
        }
        tracing::debug!(attempt, ?delay, error = %error, "transient failure, retrying");
        // A sleep that would outlive the delivery's unacked-time
        // budget goes through the broker instead.
        let past_deadline = request
            .deadline()
            .is_some_and(|deadline| tokio::time::Instant::now() + delay >= deadline);
        match self.sink {
            Some(sink) if delay > policy.in_process_limit || past_deadline => {
                let due = now + delay;
                let copy = copy::retry(request.message(), attempt + 1, due, first);
                let written = match request.extensions.get::<InTransaction>() {
                    Some(transaction) => sink.retry_later_in(copy, delay, transaction).await,
                    None => sink.retry_later(copy, delay).await,
                };
                match written {
                    Ok(()) => {}
                    // A copy that can never be written: the message
                    // cannot wait its delay anywhere, so it is
                    // dead-lettered with its failure instead of looping.
                    Err(source) if source.is_permanent() => {
                        tracing::error!(attempt, error = %source, "the delayed-retry copy can never be written; dead-lettering the message");
                        let mut failure = failure(*kind);
                        failure.message = format!(
                            "{}; its delayed retry could not be written: {}",
                            failure.message,
                            error::chain(&source)
                        );
                        return Some(Err(Error::Failed(failure)));
                    }
                    Err(source) => {
                        return Some(Err(Error::Retry {
                            source,
                            attempts: attempt,
                        }));
                    }
                }
                crate::lifecycle::deferred(&request.message().meta, attempt + 1);
                Some(Ok(Outcome::Deferred {
                    attempt: attempt + 1,
                    due,
                }))
            }
            _ => {
                // Cancelled on shutdown, a revoke, or the deadline.
                tokio::select! {
                    () = tokio::time::sleep(delay) => None,
                    () = request.cancellation().cancelled() => Some(Err(Error::Shutdown)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
