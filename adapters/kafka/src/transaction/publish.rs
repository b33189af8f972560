//! [`TransactionalPublishLayer`]: a handler's publishes, committed with the
//! message they follow from.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use backstop::HandlerError;
use backstop::outgoing::{self, Collected, Outbound, Outgoing};
use backstop::request::Request;
use backstop::transaction::InTransaction;
use tower::{Layer, Service};

use crate::KafkaPublisher;

/// Lets handlers publish ([`Context::publish`](backstop::Context::publish))
/// into their delivery's Kafka transaction; goes around each attempt
/// ([`StackBuilder::around_attempt`](backstop::StackBuilder::around_attempt)).
///
/// An attempt's publishes are kept with the attempt: if it succeeds they
/// join its delivery's records and are committed with its offset (see
/// [`transaction`](crate::transaction)); if it fails they are dropped, and
/// the retry publishes them again (under the same ids). A delivery that is
/// not in a transaction (the source is not in exactly-once mode) publishes
/// at once through the confirmed publisher, as
/// [`PublishLayer`](backstop::outgoing::PublishLayer) does.
///
/// ```no_run
/// use std::sync::Arc;
/// use backstop::{Context, HandlerError, Message, StackBuilder, handler_fn};
/// use backstop_kafka::{ExactlyOnce, Kafka};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kafka = Kafka::new("127.0.0.1:9092", "billing")
///     .configure(|c| c.exactly_once = Some(ExactlyOnce::new("billing", "worker-1")));
/// async fn bill(order: String, ctx: Context) -> Result<(), HandlerError> {
///     ctx.publish("invoices", Message::new(order)).await?;
///     Ok(())
/// }
/// let stack = StackBuilder::<String>::new(Arc::new(kafka.dead_letter_sink()?))
///     .around_attempt(kafka.publish_layer()?)
///     .build(handler_fn(bill));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TransactionalPublishLayer {
    direct: Arc<dyn Outgoing>,
}

impl std::fmt::Debug for TransactionalPublishLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalPublishLayer")
            .finish_non_exhaustive()
    }
}

impl TransactionalPublishLayer {
    /// Publishes into the delivery's transaction, or at once through
    /// `publisher` for a delivery outside one.
    pub fn new(publisher: KafkaPublisher) -> Self {
        TransactionalPublishLayer {
            direct: outgoing::confirmed(publisher),
        }
    }
}

impl<S> Layer<S> for TransactionalPublishLayer {
    type Service = TransactionalPublishService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TransactionalPublishService {
            inner,
            direct: Arc::clone(&self.direct),
        }
    }
}

/// Puts an [`Outbound`] into each attempt that keeps its publishes with the
/// attempt; see [`TransactionalPublishLayer`].
#[derive(Clone)]
pub struct TransactionalPublishService<S> {
    inner: S,
    /// For deliveries outside a transaction.
    direct: Arc<dyn Outgoing>,
}

impl<S> std::fmt::Debug for TransactionalPublishService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalPublishService")
            .finish_non_exhaustive()
    }
}

type Attempt = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

impl<S, T> Service<Request<T>> for TransactionalPublishService<S>
where
    S: Service<Request<T>, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = Attempt;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let Some(transaction) = request.extensions.get::<InTransaction>().cloned() else {
            let outbound = Outbound::new(Arc::clone(&self.direct), request.message_arc());
            request.extensions.insert(outbound);
            return Box::pin(self.inner.call(request));
        };
        let outputs = Arc::new(Collected::default());
        let outbound = Outbound::new(
            Arc::clone(&outputs) as Arc<dyn Outgoing>,
            request.message_arc(),
        );
        request.extensions.insert(outbound);
        let future = self.inner.call(request);
        Box::pin(async move {
            future.await?;
            // All of the attempt's publishes, or none.
            transaction.0.produce_all(outputs.take()).map_err(refused)
        })
    }
}

/// A refused produce as the attempt's error: a record too large for good
/// fails the message; otherwise the delivery was fenced (a rewind, a
/// revoke) and it is deferred without spending an attempt.
fn refused(error: backstop::error::SinkError) -> HandlerError {
    if error.is_permanent() {
        HandlerError::permanent(error)
    } else {
        HandlerError::unavailable(error)
    }
}
