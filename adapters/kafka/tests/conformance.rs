//! The broker-neutral conformance scenarios, run against Kafka.

mod common;

use std::sync::Arc;

use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::publish::Publisher;
use backstop_kafka::{Kafka, KafkaSource, RetryTiers, TopicSpec};
use backstop_testkit::conformance::Harness;

/// Each queue is a 3-partition topic consumed by its own group, `<topic>-group`.
struct KafkaHarness {
    publisher: Kafka,
}

impl KafkaHarness {
    fn new() -> Self {
        KafkaHarness {
            publisher: kafka("conformance-publisher"),
        }
    }
}

fn kafka(group: &str) -> Kafka {
    common::kafka(group).retry_tiers(RetryTiers::new([]))
}

fn group_of(queue: &str) -> String {
    format!("{queue}-group")
}

impl Harness for KafkaHarness {
    type Source = KafkaSource;

    async fn fresh_queue(&self) -> Result<String, BoxError> {
        let topic = common::unique("conformance");
        kafka(&group_of(&topic))
            .ensure_topics([TopicSpec::new(topic.clone()).partitions(3)])
            .await?;
        Ok(topic)
    }

    async fn source(&self, queue: &str, prefetch: usize) -> Result<KafkaSource, BoxError> {
        Ok(kafka(&group_of(queue)).source(&[queue], prefetch)?)
    }

    async fn publisher(&self) -> Result<Arc<dyn Publisher>, BoxError> {
        Ok(Arc::new(self.publisher.publisher()?))
    }

    async fn dead_letter_sink(&self, queue: &str) -> Result<Arc<dyn DeadLetterSink>, BoxError> {
        Ok(Arc::new(kafka(&group_of(queue)).dead_letter_sink()?))
    }

    fn dlq_name(&self, queue: &str) -> String {
        kafka(&group_of(queue)).dlq_topic(queue)
    }
}

backstop_testkit::conformance_tests!(KafkaHarness::new());
