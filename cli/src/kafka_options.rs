//! `--kafka-option KEY=VALUE` (repeatable): librdkafka properties, such as
//! `security.protocol`, `sasl.*` and `ssl.*`, for every Kafka client the
//! command creates. Secret values (`sasl.password=@/run/secrets/pw`) are
//! read from files and never shown.
//!
//! The options are those of the command being run: [`run`](crate::run)
//! sets them before anything connects.

use std::sync::RwLock;

use backstop_kafka::rdkafka::ClientConfig;
use backstop_kafka::{Kafka, KafkaConfig, KafkaOption};

use crate::error::CliError;

static OPTIONS: RwLock<Vec<KafkaOption>> = RwLock::new(Vec::new());

/// Makes `options` the ones every following Kafka client gets.
pub fn set(options: &[KafkaOption]) {
    *OPTIONS.write().unwrap_or_else(|e| e.into_inner()) = options.to_vec();
}

fn current() -> Vec<KafkaOption> {
    OPTIONS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A librdkafka configuration for `brokers` with the command's options.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for option in current() {
        config.set(option.key(), option.value());
    }
    config
}

/// The adapter's configuration for `brokers` and `group` with the command's options.
pub fn kafka_config(brokers: &str, group: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers, group);
    config.apply_options(&current());
    config
}

/// One metadata round trip with the command's options: a wrong password,
/// CA or security protocol fails here at once, with librdkafka's reason.
pub async fn check(brokers: &str) -> Result<(), CliError> {
    Kafka::from_config(kafka_config(brokers, "backstop-cli"))
        .check(crate::kafka_read::TIMEOUT)
        .await
        .map_err(|e| CliError::Kafka {
            what: "connecting".to_owned(),
            reason: e.to_string(),
        })
}
