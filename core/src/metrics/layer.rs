use tower::Layer;

use super::{MetricLabels, Metrics};

/// Applies [`Metrics`].
#[derive(Clone, Debug, Default)]
pub struct MetricsLayer {
    labels: MetricLabels,
}

impl MetricsLayer {
    /// The layer; its metrics carry empty `source` and `group` labels.
    pub fn new() -> Self {
        MetricsLayer::default()
    }

    /// The layer; its metrics carry `labels`.
    pub fn labelled(labels: MetricLabels) -> Self {
        MetricsLayer { labels }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::labelled(inner, &self.labels)
    }
}
