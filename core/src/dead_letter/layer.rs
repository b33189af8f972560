use std::sync::Arc;

use tower::Layer;

use super::{DeadLetter, DeadLetterSink, Writer};

/// Applies [`DeadLetter`] with a sink and an optional DLQ name. The services
/// it makes share one table of pending letters (see the [module docs](super)).
///
/// Used alone, over a service that fails for good: the letter is written
/// (and confirmed) before the service answers
/// [`Outcome::DeadLettered`](crate::outcome::Outcome::DeadLettered).
///
/// ```
/// use std::sync::Arc;
/// use std::time::SystemTime;
///
/// use backstop::dead_letter::DeadLetterLayer;
/// use backstop::error::{Error, Failure};
/// use backstop::memory::MemoryBroker;
/// use backstop::outcome::Outcome;
/// use backstop::request::Request;
/// use backstop::{ErrorKind, Message};
/// use tokio_util::sync::CancellationToken;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = MemoryBroker::new();
/// let failing = service_fn(|_request: Request<String>| async {
///     Err::<Outcome, _>(Error::Failed(Failure {
///         kind: ErrorKind::Permanent,
///         message: "no such customer".into(),
///         attempts: 1,
///         first_failure: SystemTime::now(),
///         last_failure: SystemTime::now(),
///     }))
/// });
/// let guarded = DeadLetterLayer::new(Arc::new(broker.dead_letter_sink()))
///     .to("orders.dlq")
///     .layer(failing);
///
/// let request = Request::<String>::decode(Message::new("\"o-1\""), CancellationToken::new(), None);
/// let outcome = guarded.oneshot(request).await.expect("the letter is confirmed");
/// assert!(matches!(outcome, Outcome::DeadLettered { kind: ErrorKind::Permanent }));
/// let letters = broker.peek("orders.dlq");
/// assert_eq!(letters.len(), 1);
/// assert_eq!(letters[0].header(backstop::wire::ERROR_KIND), Some("permanent"));
/// # }
/// ```
#[derive(Clone)]
pub struct DeadLetterLayer {
    writer: Writer,
}

impl std::fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("destination", &self.writer.destination)
            .finish_non_exhaustive()
    }
}

impl DeadLetterLayer {
    /// Dead-letters through `sink` to its default DLQ.
    pub fn new(sink: Arc<dyn DeadLetterSink>) -> Self {
        DeadLetterLayer {
            writer: Writer::new(sink),
        }
    }

    /// Dead-letters to `destination` instead of the sink's default.
    #[must_use]
    pub fn to(mut self, destination: impl Into<Arc<str>>) -> Self {
        self.writer = self.writer.to(destination.into());
        self
    }

    /// Settles messages that expired before they ran as `ttl` says
    /// (dead-lettered with kind `expired`, or discarded), without running
    /// them; see [`expiry`](crate::expiry).
    #[must_use]
    pub fn time_to_live(mut self, ttl: crate::expiry::TimeToLive) -> Self {
        self.writer = self.writer.expire_after(ttl);
        self
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter {
            inner,
            writer: self.writer.clone(),
        }
    }
}
