//! The set-up the Kafka suites of the real `order-worker` share: a run's
//! names, its ledger schema, its topic, and the worker's arguments on it.

use backstop_kafka::{Kafka, TopicSpec};

use crate::ledger::Ledger;
use crate::unique;

/// One run on Kafka; see the [module docs](self).
#[derive(Debug)]
pub struct KafkaRun {
    /// The run's name (`<prefix>_<unique>`): its ledger schema and the
    /// prefix of its ids.
    pub run: String,
    /// Its topic: the run's name with `-` for `_`.
    pub topic: String,
    /// The workers' consumer group, `<topic>-worker`.
    pub group: String,
    /// Its ledger, in a schema of its own.
    pub ledger: Ledger,
    /// A client of the group (ordered retries off: the workers' own
    /// `ensure_topics` adds what their mode needs).
    pub kafka: Kafka,
    brokers: String,
}

impl KafkaRun {
    /// A run named after `prefix` on `brokers`: the ledger schema, and the
    /// topic with the worker's own spec (4 partitions) and its DLQ and
    /// retry topics, so publishing can start at once.
    pub async fn create(prefix: &str, brokers: &str) -> KafkaRun {
        let run = unique(prefix);
        let topic = run.replace('_', "-");
        let group = format!("{topic}-worker");
        let ledger = Ledger::create(&run).await.expect("ledger schema");
        let kafka = Kafka::new(brokers.to_owned(), group.clone());
        kafka
            .ensure_topics([TopicSpec::new(topic.clone()).partitions(4)])
            .await
            .expect("create the topics");
        KafkaRun {
            run,
            topic,
            group,
            ledger,
            kafka,
            brokers: brokers.to_owned(),
        }
    }

    /// The worker's arguments for this run: Kafka at the run's brokers, its
    /// topic and group, the `postgres-inbox` store and the ledger, then
    /// `extra`.
    pub fn worker_args(&self, extra: &[&str]) -> Vec<String> {
        let common = [
            "--broker",
            "kafka",
            "--url",
            &self.brokers,
            "--source",
            &self.topic,
            "--group",
            &self.group,
            "--store",
            "postgres-inbox",
            "--ledger",
            self.ledger.url(),
        ];
        common
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    }
}
