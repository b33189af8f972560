use tower::Layer;

use super::Metrics;

/// Applies [`Metrics`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl MetricsLayer {
    /// The layer.
    pub const fn new() -> Self {
        MetricsLayer
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner)
    }
}
