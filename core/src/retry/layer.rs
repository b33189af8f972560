use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryPolicy, RetrySink};

/// Applies [`Retry`] with a policy and an optional sink for long delays.
///
/// Used alone, over any service of [`Request`](crate::request::Request)s
/// that returns a [`HandlerError`](crate::error::HandlerError): a transient
/// failure runs again, with backoff, until the policy's attempts run out.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// use backstop::outcome::Outcome;
/// use backstop::request::Request;
/// use backstop::retry::RetryLayer;
/// use backstop::{HandlerError, Message, RetryPolicy};
/// use tokio_util::sync::CancellationToken;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let runs = Arc::new(AtomicU32::new(0));
/// let counted = Arc::clone(&runs);
/// let flaky = service_fn(move |_request: Request<String>| {
///     let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
///     async move {
///         if run < 3 {
///             Err(HandlerError::transient("not yet"))
///         } else {
///             Ok(())
///         }
///     }
/// });
/// let policy = RetryPolicy::retries(4).backoff(Duration::from_millis(1), Duration::from_millis(2));
/// let retried = RetryLayer::new(policy).layer(flaky);
///
/// let request = Request::<String>::decode(Message::new("\"hi\""), CancellationToken::new(), None);
/// let outcome = retried.oneshot(request).await.expect("the third run succeeds");
/// assert_eq!(outcome, Outcome::Handled);
/// assert_eq!(runs.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    sink: Option<Arc<dyn RetrySink>>,
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl RetryLayer {
    /// Retries by `policy`, sleeping every delay in process.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer { policy, sink: None }
    }

    /// Hands delays longer than the policy's in-process limit to `sink`.
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.sink = Some(sink);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone(), self.sink.clone())
    }
}
