//! [`KafkaConfig`]: the brokers, the group and the settings every client of
//! the adapter is built from.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::RetryTiers;

/// The brokers used when `BACKSTOP_KAFKA_BROKERS` is not set: the local broker.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// The bootstrap servers from `BACKSTOP_KAFKA_BROKERS`, else [`DEFAULT_BROKERS`].
pub fn brokers_from_env() -> String {
    std::env::var("BACKSTOP_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.to_owned())
}

/// Where a consumer group with no committed offset starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest message kept (the default: nothing is skipped).
    #[default]
    Earliest,
    /// From the next message produced.
    Latest,
}

impl OffsetReset {
    fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// The settings of the adapter's consumers, producers and admin clients.
///
/// Every field has a safe default ([`KafkaConfig::new`]); `properties` go to
/// every client, `consumer_properties` and `producer_properties` to one kind,
/// and they override what the adapter sets (use them with care:
/// `enable.auto.offset.store` must stay `false`).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// The consumer group; also part of the DLQ and retry topic names.
    pub group: String,
    /// librdkafka properties for every client.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer_properties: BTreeMap<String, String>,
    /// `session.timeout.ms`: how long a silent member keeps its partitions (default 10 s).
    pub session_timeout: Duration,
    /// `auto.commit.interval.ms`: how often stored offsets are committed (default 1 s).
    pub auto_commit_interval: Duration,
    /// `auto.offset.reset` (default earliest).
    pub offset_reset: OffsetReset,
    /// A partition tracking more received-but-unfinished messages than this is
    /// paused until half of them are done (default 50,000). Bounds memory,
    /// with `max_pending_bytes_per_partition`.
    pub max_pending_per_partition: usize,
    /// A partition holding more bytes of unfinished messages than this is
    /// paused until half of them are done (default 32 MiB).
    pub max_pending_bytes_per_partition: usize,
    /// `message.timeout.ms`: a publish not confirmed within this fails with a timeout (default 30 s).
    pub message_timeout: Duration,
    /// `topic.metadata.propagation.max.ms`: a publish to a topic missing for
    /// this long fails as a missing destination (default 5 s).
    pub missing_topic_timeout: Duration,
    /// The delay tiers of non-blocking retries (default 5 s, 30 s, 5 min).
    pub retry_tiers: RetryTiers,
}

impl KafkaConfig {
    /// The defaults for `brokers` and `group`.
    pub fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            group: group.into(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: Duration::from_secs(1),
            offset_reset: OffsetReset::Earliest,
            max_pending_per_partition: 50_000,
            max_pending_bytes_per_partition: 32 << 20,
            message_timeout: Duration::from_secs(30),
            missing_topic_timeout: Duration::from_secs(5),
            retry_tiers: RetryTiers::default(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("allow.auto.create.topics", "false");
        config
    }

    fn overrides(config: &mut ClientConfig, layers: [&BTreeMap<String, String>; 2]) {
        for layer in layers {
            for (k, v) in layer {
                config.set(k, v);
            }
        }
    }

    /// The consumer's configuration: auto commit of explicitly stored offsets,
    /// cooperative-sticky assignment.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.base();
        let session = millis(self.session_timeout).max(1_000);
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                millis(self.auto_commit_interval).max(10).to_string(),
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("auto.offset.reset", self.offset_reset.as_str())
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // A pause (back-pressure, due retries) turns the fetch in flight
            // into an outdated one; librdkafka then backs off 500 ms by
            // default before fetching the resumed partition again.
            .set("fetch.error.backoff.ms", "50")
            .set("fetch.queue.backoff.ms", "50");
        Self::overrides(&mut config, [&self.properties, &self.consumer_properties]);
        config
    }

    /// A consumer configuration that only reads group offsets (no subscription).
    pub(crate) fn offsets_reader_config(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false");
        Self::overrides(&mut config, [&self.properties, &self.consumer_properties]);
        config
    }

    /// The producer's configuration: idempotent, `acks=all`, bounded timeouts.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.base();
        let timeout = millis(self.message_timeout).max(1);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", timeout.to_string())
            .set(
                "topic.metadata.propagation.max.ms",
                millis(self.missing_topic_timeout)
                    .clamp(1, timeout)
                    .to_string(),
            );
        Self::overrides(&mut config, [&self.properties, &self.producer_properties]);
        config
    }

    /// The admin client's configuration.
    pub fn admin_config(&self) -> ClientConfig {
        let mut config = self.base();
        Self::overrides(&mut config, [&self.properties, &BTreeMap::new()]);
        config
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_stores_offsets_explicitly_and_cooperates() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        kc.consumer_properties
            .insert("fetch.min.bytes".into(), "10".into());
        let c = kc.consumer_config();
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("enable.auto.commit"), Some("true"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(c.get("fetch.min.bytes"), Some("10"));
    }

    #[test]
    fn producer_is_idempotent_with_bounded_timeouts() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        kc.message_timeout = Duration::from_secs(2);
        let p = kc.producer_config();
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("message.timeout.ms"), Some("2000"));
        assert_eq!(p.get("topic.metadata.propagation.max.ms"), Some("2000"));
        assert_eq!(p.get("allow.auto.create.topics"), Some("false"));
    }
}
