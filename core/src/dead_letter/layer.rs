use std::sync::Arc;

use tower::Layer;

use super::{DeadLetter, DeadLetterSink, Writer};

/// Applies [`DeadLetter`] with a sink and an optional DLQ name. The services
/// it makes share one table of pending letters (see the [module docs](super)).
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
