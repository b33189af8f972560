use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::Ack;
use crate::retry::RetrySink;

/// Applies [`Ack`].
#[derive(Clone)]
pub struct AckLayer {
    nack_delay: Duration,
    postpone: Option<Arc<dyn RetrySink>>,
}

impl std::fmt::Debug for AckLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckLayer")
            .field("nack_delay", &self.nack_delay)
            .field("postpone", &self.postpone.is_some())
            .finish()
    }
}

impl AckLayer {
    /// Errors are nacked after a jittered wait of about `nack_delay`.
    pub const fn new(nack_delay: Duration) -> Self {
        AckLayer {
            nack_delay,
            postpone: None,
        }
    }

    /// Postpones errors that spend no attempt (and deliveries at their
    /// deadline) through `sink`: a confirmed copy with the same attempt
    /// count, then an ack. Where the sink refuses (a classic queue), they
    /// are nacked as before.
    #[must_use]
    pub fn postpone_through(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.postpone = Some(sink);
        self
    }
}

impl Default for AckLayer {
    fn default() -> Self {
        AckLayer::new(Duration::from_secs(1))
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = Ack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let ack = Ack::new(inner, self.nack_delay);
        match &self.postpone {
            Some(sink) => ack.postpone_through(Arc::clone(sink)),
            None => ack,
        }
    }
}
