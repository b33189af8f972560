//! Replay epochs for `backstop replay --mode reprocess`.
//!
//! Offsets are reset and messages are not rewritten, so deduplication would
//! skip every message already done. `reprocess` therefore bumps an epoch kept
//! in the compacted topic `<topic>.<group>.epoch` (key `epoch`, value the
//! decimal epoch); a worker reads it at start with [`current`] and wraps its
//! idempotency store in [`backstop::idempotency::Namespaced`] with the
//! namespace `epoch-<epoch>`, so keys of the new epoch are new and every
//! message runs again. The order of a stored key is fixed: store wrappers
//! outermost (`epoch-<epoch>:`), then the consumer's keyspace that the
//! idempotency layer adds (`<topic>#<group>:`, see
//! [`backstop::idempotency::Keyspace`]), then the key:
//! `epoch-3:orders#billing:order-42`.

use backstop::Message;
use backstop_kafka::{KafkaPublisher, TopicSpec, Topics};

use crate::error::CliError;
use crate::kafka_read;

/// The epoch topic of `topic` for `group`: `<topic>.<group>.epoch`.
pub fn epoch_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.epoch")
}

/// True for a name of the shape of [`epoch_topic`].
pub fn is_epoch_topic(name: &str) -> bool {
    name.ends_with(".epoch")
}

/// The current replay epoch of `group` on `topic` (0 when never bumped).
pub async fn current(brokers: &str, topic: &str, group: &str) -> Result<u64, CliError> {
    let (b, t) = (brokers.to_owned(), epoch_topic(topic, group));
    let records = tokio::task::spawn_blocking(move || kafka_read::read_all(&b, &t))
        .await
        .map_err(|e| CliError::Kafka {
            what: "reading the epoch".into(),
            reason: e.to_string(),
        })?;
    let records = match records {
        Ok(r) => r,
        Err(CliError::MissingTopic(_)) => return Ok(0),
        Err(e) => return Err(e),
    };
    Ok(records
        .iter()
        .filter_map(|(m, _)| {
            std::str::from_utf8(&m.payload)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0))
}

/// Bumps the epoch (creating the compacted topic on first use); returns the new one.
pub async fn bump(brokers: &str, topic: &str, group: &str) -> Result<u64, CliError> {
    let next = current(brokers, topic, group).await? + 1;
    let config = crate::kafka_options::kafka_config(brokers, group);
    let kafka = |what: &str| {
        let what = what.to_owned();
        move |e: backstop_kafka::Error| CliError::Kafka {
            what,
            reason: e.to_string(),
        }
    };
    let name = epoch_topic(topic, group);
    Topics::new(&config)
        .map_err(kafka("creating an admin client"))?
        .create(&[TopicSpec::new(&name).config("cleanup.policy", "compact")])
        .await
        .map_err(kafka("creating the epoch topic"))?;
    let publisher = KafkaPublisher::new(&config).map_err(kafka("creating a producer"))?;
    backstop::Publisher::publish(
        &publisher,
        &name,
        &Message::new(next.to_string()).with_key("epoch"),
    )
    .await
    .map_err(|e| CliError::Kafka {
        what: format!("writing epoch {next} to {name}"),
        reason: e.to_string(),
    })?;
    Ok(next)
}
