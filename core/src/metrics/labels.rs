//! [`MetricLabels`]: the `source` and `group` labels every metric of one
//! consumer carries.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label};

use super::keys::METADATA;

/// The `source` and `group` labels on every metric one consumer records, so
/// fifty workers' series can be told apart on one dashboard.
///
/// By convention (what the adapters' own metrics use): on RabbitMQ both are
/// the consumed queue's name (a queue is its consumers' group); on Kafka
/// `source` is the consumed topics joined with `,` and `group` the consumer
/// group id; on the in-memory broker both are the queue's name. Each source
/// type has a `metric_labels()` that follows it.
///
/// Handles made from these labels are registered with the recorder
/// installed when they are made: install the recorder (for example
/// `metrics-exporter-prometheus`) before building stacks and runners.
///
/// ```
/// use backstop::metrics::MetricLabels;
///
/// let labels = MetricLabels::new("orders", "orders");
/// assert_eq!(labels.source(), "orders");
/// let ready = labels.gauge(backstop::metrics::READY);
/// ready.set(1.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricLabels {
    source: Arc<str>,
    group: Arc<str>,
}

impl MetricLabels {
    /// Labels of the consumer of `source` in `group`.
    pub fn new(source: impl Into<String>, group: impl Into<String>) -> Self {
        MetricLabels {
            source: Arc::from(source.into()),
            group: Arc::from(group.into()),
        }
    }

    /// The `source` label.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `group` label.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The two labels, followed by `extra`.
    pub fn with(&self, extra: &[(&'static str, &str)]) -> Vec<Label> {
        super::consumer_labels(&self.source, &self.group, extra)
    }

    /// The key of metric `name` with these labels and `extra`.
    pub fn key(&self, name: &'static str, extra: &[(&'static str, &str)]) -> Key {
        Key::from_parts(name, self.with(extra))
    }

    /// A gauge handle for `name` with these labels.
    pub fn gauge(&self, name: &'static str) -> Gauge {
        self.gauge_with(name, &[])
    }

    /// A gauge handle for `name` with these labels and `extra`.
    pub fn gauge_with(&self, name: &'static str, extra: &[(&'static str, &str)]) -> Gauge {
        let key = self.key(name, extra);
        metrics::with_recorder(|recorder| recorder.register_gauge(&key, &METADATA))
    }

    /// A counter handle for `name` with these labels and `extra`.
    pub fn counter_with(&self, name: &'static str, extra: &[(&'static str, &str)]) -> Counter {
        let key = self.key(name, extra);
        metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
    }

    /// A histogram handle for `name` with these labels and `extra`.
    pub fn histogram_with(&self, name: &'static str, extra: &[(&'static str, &str)]) -> Histogram {
        let key = self.key(name, extra);
        metrics::with_recorder(|recorder| recorder.register_histogram(&key, &METADATA))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_source_group_and_extra_labels_in_order() {
        let key = MetricLabels::new("orders", "g1").key("m", &[("outcome", "handled")]);
        let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(
            labels,
            [
                ("source", "orders"),
                ("group", "g1"),
                ("outcome", "handled")
            ]
        );
    }
}
