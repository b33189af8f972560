use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryPolicy, RetrySink};

/// Applies [`Retry`] with a policy and an optional sink for long delays.
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
