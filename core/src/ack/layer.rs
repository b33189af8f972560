use std::time::Duration;

use tower::Layer;

use super::Ack;

/// Applies [`Ack`].
#[derive(Clone, Copy, Debug)]
pub struct AckLayer {
    nack_delay: Duration,
}

impl AckLayer {
    /// Errors are nacked after a jittered wait of about `nack_delay`.
    pub const fn new(nack_delay: Duration) -> Self {
        AckLayer { nack_delay }
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
        Ack::new(inner, self.nack_delay)
    }
}
