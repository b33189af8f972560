//! [`KafkaConfig`]: the brokers, the group and the settings every client of
//! the adapter is built from.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::RetryTiers;
use crate::options::KafkaOption;
use crate::transaction::ExactlyOnce;

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
/// `enable.auto.offset.store` must stay `false`). Its `Debug` output hides the
/// values of secret properties (`sasl.password`, `ssl.key.password`,
/// `sasl.jaas.config`, …; see [`backstop::redact::is_secret_property`]).
///
/// ```
/// use backstop_kafka::KafkaConfig;
///
/// let mut config = KafkaConfig::new("127.0.0.1:9092", "order-workers");
/// config.properties.insert("client.id".into(), "worker-1".into());
///
/// let consumer = config.consumer_config();
/// assert_eq!(consumer.get("group.id"), Some("order-workers"));
/// // Offsets are stored by backstop after success, never by the client.
/// assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
/// assert_eq!(consumer.get("partition.assignment.strategy"), Some("cooperative-sticky"));
/// assert_eq!(consumer.get("client.id"), Some("worker-1"));
/// // The producer of the DLQ and retry topics is idempotent.
/// assert_eq!(config.producer_config().get("enable.idempotence"), Some("true"));
/// ```
#[derive(Clone)]
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
    /// `group.instance.id`: static group membership (default none). A member
    /// with a fixed instance id that restarts within the session timeout gets
    /// its partitions back without a rebalance of the group. Each process of
    /// the group needs its own id; a second live member with the same id
    /// fences the first, which then stops with a fatal source error
    /// (`FENCED_INSTANCE_ID`) for its supervisor to restart.
    ///
    /// Static members are assigned with an eager assignor (`roundrobin`),
    /// not `cooperative-sticky`: a cooperative rebalance takes two rounds,
    /// and only the member giving partitions up starts the second. Killed
    /// between the rounds and restarted with its instance id, it is handed
    /// the first round's assignment without a new rebalance, and the
    /// partitions it was giving up stay unowned until the group next
    /// changes. An eager round is complete by itself. One group cannot mix
    /// the two protocols: moving a group of static members to this version
    /// (or a group to static membership) takes a restart of every member,
    /// not a rolling one.
    pub group_instance_id: Option<String>,
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
    /// The whole consumer: when the partitions together track more
    /// received-but-unfinished messages than this, every partition is paused
    /// until the total is back to half (default 200,000). Bounds memory however
    /// many partitions are assigned.
    pub max_pending: usize,
    /// The whole consumer: when the partitions together hold more bytes of
    /// unfinished messages than this, every partition is paused until the
    /// total is back to half (default 256 MiB). librdkafka's own prefetch
    /// queue (`queued.max.messages.kbytes`) is sized to a quarter of it
    /// (1 MiB to 64 MiB), so the consumer holds at most about 1.25 × this.
    pub max_pending_bytes: usize,
    /// The largest record the producer sends (its `message.max.bytes`,
    /// default 8 MiB). It must cover what the DLQ and retry topics accept:
    /// [`Topics::ensure_with_companions`](crate::Topics::ensure_with_companions)
    /// refuses a source topic whose records, plus backstop's headers, would
    /// not fit. Above the broker's limits, the broker's per-topic
    /// `max.message.bytes` decides.
    pub max_message_bytes: usize,
    /// `message.timeout.ms`: a publish not confirmed within this fails with a timeout (default 30 s).
    pub message_timeout: Duration,
    /// `topic.metadata.propagation.max.ms`: a publish to a topic missing for
    /// this long fails as a missing destination (default 5 s).
    pub missing_topic_timeout: Duration,
    /// The delay tiers of non-blocking retries (default 5 s, 30 s, 5 min).
    pub retry_tiers: RetryTiers,
    /// How often a source reports its partitions' lag
    /// (`backstop_kafka_lag_records`, `backstop_kafka_oldest_unfinished_seconds`)
    /// and its DLQs' depth (`backstop_dlq_depth`). Default 5 s.
    pub metrics_interval: Duration,
    /// Exactly-once hand-off (default off): dead letters, retry copies and
    /// handler outputs are committed in one Kafka transaction with the
    /// offsets they follow from; see [`ExactlyOnce`].
    pub exactly_once: Option<ExactlyOnce>,
    /// Retries that keep per-key order (default off; needs
    /// [`exactly_once`](Self::exactly_once)): while a message waits in a
    /// retry tier, the later messages of its key on its partition wait
    /// behind it in the parked topic (`<topic>.<group>.parked`) and run
    /// after it ended, in their order; other keys keep flowing. Every
    /// member of the group must have it on. See [`parking`](crate::parking).
    pub ordered_retries: bool,
}

/// A property map with secret values hidden, for `Debug`.
struct Properties<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Properties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, backstop::redact::property_value(k, v))),
            )
            .finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("group_instance_id", &self.group_instance_id)
            .field("properties", &Properties(&self.properties))
            .field(
                "consumer_properties",
                &Properties(&self.consumer_properties),
            )
            .field(
                "producer_properties",
                &Properties(&self.producer_properties),
            )
            .field("session_timeout", &self.session_timeout)
            .field("auto_commit_interval", &self.auto_commit_interval)
            .field("offset_reset", &self.offset_reset)
            .field("max_pending_per_partition", &self.max_pending_per_partition)
            .field(
                "max_pending_bytes_per_partition",
                &self.max_pending_bytes_per_partition,
            )
            .field("message_timeout", &self.message_timeout)
            .field("missing_topic_timeout", &self.missing_topic_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("retry_tiers", &self.retry_tiers)
            .field("metrics_interval", &self.metrics_interval)
            .field("exactly_once", &self.exactly_once)
            .field("ordered_retries", &self.ordered_retries)
            .finish()
    }
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
            group_instance_id: None,
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: Duration::from_secs(1),
            offset_reset: OffsetReset::Earliest,
            max_pending_per_partition: 50_000,
            max_pending_bytes_per_partition: 32 << 20,
            max_pending: 200_000,
            max_pending_bytes: 256 << 20,
            max_message_bytes: 8 << 20,
            message_timeout: Duration::from_secs(30),
            missing_topic_timeout: Duration::from_secs(5),
            retry_tiers: RetryTiers::default(),
            metrics_interval: Duration::from_secs(5),
            exactly_once: None,
            ordered_retries: false,
        }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("allow.auto.create.topics", "false");
        config
    }

    /// The partition assignor: eager for static members (see
    /// [`group_instance_id`](Self::group_instance_id)).
    fn assignor(&self) -> &'static str {
        if self.group_instance_id.is_some() {
            "roundrobin"
        } else {
            "cooperative-sticky"
        }
    }

    fn overrides(config: &mut ClientConfig, layers: [&BTreeMap<String, String>; 2]) {
        for layer in layers {
            for (k, v) in layer {
                config.set(k, v);
            }
        }
    }

    /// The consumer's configuration: auto commit of explicitly stored offsets,
    /// cooperative-sticky assignment (`roundrobin` for a static member: see
    /// [`group_instance_id`](Self::group_instance_id)).
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.base();
        let session = millis(self.session_timeout).max(1_000);
        config
            .set("group.id", &self.group)
            // In exactly-once mode offsets are committed by the transactions only.
            .set(
                "enable.auto.commit",
                if self.exactly_once.is_some() {
                    "false"
                } else {
                    "true"
                },
            )
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                millis(self.auto_commit_interval).max(10).to_string(),
            )
            .set("partition.assignment.strategy", self.assignor())
            .set("auto.offset.reset", self.offset_reset.as_str())
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // A pause (back-pressure, due retries) turns the fetch in flight
            // into an outdated one; librdkafka then backs off 500 ms by
            // default before fetching the resumed partition again.
            .set("fetch.error.backoff.ms", "50")
            .set("fetch.queue.backoff.ms", "50")
            // librdkafka's prefetch queue is memory outside the trackers:
            // keep it a fraction of the consumer's budget.
            .set(
                "queued.max.messages.kbytes",
                (self.max_pending_bytes / 4 / 1024)
                    .clamp(1024, 64 * 1024)
                    .to_string(),
            );
        if let Some(id) = &self.group_instance_id {
            config.set("group.instance.id", id);
        }
        Self::overrides(&mut config, [&self.properties, &self.consumer_properties]);
        config
    }

    /// The parked-topic reader's configuration (ordered retries): assigned
    /// partitions only, never a commit, committed records only.
    pub(crate) fn parked_reader_config(&self) -> ClientConfig {
        let mut config = self.offsets_reader_config();
        config
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.error.backoff.ms", "50")
            .set("fetch.wait.max.ms", "50");
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
                "message.max.bytes",
                self.max_message_bytes
                    .clamp(1_000, 1_000_000_000)
                    .to_string(),
            )
            .set(
                "topic.metadata.propagation.max.ms",
                millis(self.missing_topic_timeout)
                    .clamp(1, timeout)
                    .to_string(),
            );
        Self::overrides(&mut config, [&self.properties, &self.producer_properties]);
        config
    }

    /// The transactional producer's configuration (exactly-once mode): the
    /// producer's, with `transactional.id` and `transaction.timeout.ms`.
    pub(crate) fn transactional_config(&self, exactly_once: &ExactlyOnce) -> ClientConfig {
        let mut config = self.producer_config();
        config
            .set("transactional.id", &exactly_once.transactional_id)
            // librdkafka refuses a transaction timeout below the message
            // timeout: the larger of the two.
            .set(
                "transaction.timeout.ms",
                millis(exactly_once.transaction_timeout)
                    .max(millis(self.message_timeout))
                    .max(1_000)
                    .to_string(),
            );
        config
    }

    /// The admin client's configuration.
    pub fn admin_config(&self) -> ClientConfig {
        let mut config = self.base();
        Self::overrides(&mut config, [&self.properties, &BTreeMap::new()]);
        config
    }
}

// --- Security: SSL / SASL properties given by an operator -------------------

impl KafkaConfig {
    /// Applies operator-given librdkafka properties (`--kafka-option`) to
    /// every client, e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `ssl.ca.location=…`. They override
    /// what was set before.
    ///
    /// Certificate rotation: librdkafka (2.12) reads the `ssl.*.location`
    /// files once, when a client is created, and every reconnect of that
    /// client uses what it read then. Each client backstop creates
    /// ([`Kafka::source`](crate::Kafka::source), [`Kafka::publisher`](crate::Kafka::publisher),
    /// [`Kafka::check`](crate::Kafka::check), the topic admin, a producer
    /// replaced after a fatal error) reads the files as they are at that
    /// moment, but a running source or publisher keeps the old certificate
    /// until it is created again (restart the worker after a rotation,
    /// before the old certificate expires).
    pub fn apply_options<'a>(&mut self, options: impl IntoIterator<Item = &'a KafkaOption>) {
        for option in options {
            self.properties
                .insert(option.key().to_owned(), option.value().to_owned());
        }
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
    fn a_static_member_is_assigned_eagerly() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        kc.group_instance_id = Some("worker-1".into());
        let c = kc.consumer_config();
        assert_eq!(c.get("group.instance.id"), Some("worker-1"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("roundrobin"));
        kc.consumer_properties.insert(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        );
        assert_eq!(
            kc.consumer_config().get("partition.assignment.strategy"),
            Some("cooperative-sticky"),
            "a property set by the user wins"
        );
    }

    #[test]
    fn a_group_instance_id_makes_a_static_member_of_the_consumer_only() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        assert_eq!(kc.consumer_config().get("group.instance.id"), None);
        kc.group_instance_id = Some("worker-1".into());
        assert_eq!(
            kc.consumer_config().get("group.instance.id"),
            Some("worker-1")
        );
        assert_eq!(kc.offsets_reader_config().get("group.instance.id"), None);
        assert_eq!(kc.producer_config().get("group.instance.id"), None);
    }

    #[test]
    fn options_reach_every_client_and_debug_hides_secrets() {
        let mut kc = KafkaConfig::new("b:9094", "g");
        let options = [
            KafkaOption::new("security.protocol", "SASL_SSL"),
            KafkaOption::new("sasl.password", "hunter2"),
        ];
        kc.apply_options(&options);
        for c in [
            kc.consumer_config(),
            kc.producer_config(),
            kc.admin_config(),
        ] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(c.get("sasl.password"), Some("hunter2"));
        }
        let shown = format!("{kc:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
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

    #[test]
    fn producer_sends_what_default_companion_topics_accept() {
        // A DLQ of a topic with the broker's default limit (1,048,588 bytes)
        // accepts that plus the header headroom; the producer must send it.
        let p = KafkaConfig::new("b:9092", "g").producer_config();
        let max: usize = p.get("message.max.bytes").unwrap().parse().unwrap();
        assert!(max >= 1_048_588 + crate::HEADER_HEADROOM, "{max}");
    }

    #[test]
    fn prefetch_queue_follows_the_consumer_budget() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        kc.max_pending_bytes = 8 << 20;
        let c = kc.consumer_config();
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("2048"));
        kc.max_pending_bytes = 1 << 40;
        assert_eq!(
            kc.consumer_config().get("queued.max.messages.kbytes"),
            Some("65536")
        );
    }

    #[test]
    fn debug_hides_secret_properties() {
        let mut kc = KafkaConfig::new("b:9092", "g");
        kc.properties
            .insert("sasl.password".into(), "s3cret-1".into());
        kc.properties.insert("sasl.username".into(), "alice".into());
        kc.consumer_properties
            .insert("ssl.key.password".into(), "s3cret-2".into());
        kc.producer_properties
            .insert("sasl.jaas.config".into(), "s3cret-3".into());
        let shown = format!("{kc:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("b:9092"), "{shown}");
    }
}
