//! Dead-lettering: a message that failed for good is written to the DLQ, and
//! only a write the broker confirmed yields [`Outcome::DeadLettered`].
//!
//! If the sink fails, the error is [`Error::DeadLetter`]: the ack layer leaves
//! the source unacked and it is redelivered after a backoff.

mod layer;
mod sink;

pub use self::layer::DeadLetterLayer;
pub use self::sink::DeadLetterSink;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::Service;

use crate::{Error, Outcome, Request, copy};

/// The dead-letter service; see the [module docs](self).
#[derive(Clone)]
pub struct DeadLetter<S> {
    inner: S,
    sink: Arc<dyn DeadLetterSink>,
    destination: Option<Arc<str>>,
}

impl<S> std::fmt::Debug for DeadLetter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Request<T>> for DeadLetter<S>
where
    S: Service<Request<T>, Response = Outcome, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let message = Arc::clone(request.message_arc());
        let sink = Arc::clone(&self.sink);
        let destination = self.destination.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Err(Error::Failed(failure)) => {
                    let letter = copy::dead_letter(&message, &failure);
                    sink.dead_letter(letter, destination.as_deref())
                        .await
                        .map_err(|source| Error::DeadLetter {
                            source,
                            attempts: failure.attempts,
                        })?;
                    tracing::warn!(
                        message_id = %message.meta.message_id,
                        source = %message.meta.source,
                        kind = %failure.kind,
                        attempts = failure.attempts,
                        error = %failure.message,
                        "message dead-lettered"
                    );
                    Ok(Outcome::DeadLettered { kind: failure.kind })
                }
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::SystemTime;

    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::testing::{RecordingSink, request};
    use crate::{ErrorKind, Failure, wire};

    fn failing(
        kind: ErrorKind,
    ) -> impl Service<Request<String>, Response = Outcome, Error = Error, Future: Send> + Clone
    {
        service_fn(move |_r: Request<String>| async move {
            Err(Error::Failed(Failure {
                kind,
                message: "bad order".into(),
                attempts: 3,
                first_failure: SystemTime::now(),
                last_failure: SystemTime::now(),
            }))
        })
    }

    #[tokio::test]
    async fn failure_is_written_with_headers_and_yields_dead_lettered() {
        let sink = RecordingSink::default();
        let svc = DeadLetterLayer::new(Arc::new(sink.clone()))
            .to("orders.custom-dlq")
            .layer(failing(ErrorKind::Permanent));
        let outcome = svc.oneshot(request("x")).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::DeadLettered {
                kind: ErrorKind::Permanent
            }
        );
        let taken = sink.taken();
        assert_eq!(taken.len(), 1);
        let (letter, dest, _) = &taken[0];
        assert_eq!(dest.as_deref(), Some("orders.custom-dlq"));
        assert_eq!(letter.payload, "x");
        assert_eq!(letter.header(wire::ERROR_KIND), Some("permanent"));
        assert_eq!(letter.header(wire::ERROR), Some("bad order"));
        assert_eq!(letter.header(wire::ATTEMPT), Some("3"));
        assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some("orders"));
        assert_eq!(letter.header(wire::MESSAGE_ID), Some("id-x"));
        assert!(letter.header(wire::FIRST_FAILURE).is_some());
        assert!(letter.header(wire::LAST_FAILURE).is_some());
    }

    #[tokio::test]
    async fn unconfirmed_write_is_an_error_so_the_source_stays_unacked() {
        let sink = RecordingSink::default();
        sink.failing.store(true, Ordering::SeqCst);
        let svc = DeadLetterLayer::new(Arc::new(sink.clone())).layer(failing(ErrorKind::Decode));
        let err = svc.oneshot(request("x")).await.unwrap_err();
        assert!(matches!(err, Error::DeadLetter { attempts: 3, .. }));
        assert!(sink.taken().is_empty());
    }

    #[tokio::test]
    async fn outcomes_and_other_errors_pass_through() {
        let sink = RecordingSink::default();
        let ok = DeadLetterLayer::new(Arc::new(sink.clone())).layer(service_fn(
            |_r: Request<String>| async { Ok::<_, Error>(Outcome::Handled) },
        ));
        assert_eq!(ok.oneshot(request("x")).await.unwrap(), Outcome::Handled);
        let busy = DeadLetterLayer::new(Arc::new(sink.clone())).layer(service_fn(
            |_r: Request<String>| async { Err::<Outcome, _>(Error::Busy { key: "k".into() }) },
        ));
        assert!(matches!(
            busy.oneshot(request("x")).await,
            Err(Error::Busy { .. })
        ));
        assert!(sink.taken().is_empty());
    }
}
