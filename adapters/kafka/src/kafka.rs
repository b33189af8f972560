//! [`Kafka`]: a worker's Kafka wiring in a few lines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::names::parked_topic;
use crate::names::{dlq_topic, retry_topic};
use crate::{
    Error, ExactlyOnce, KafkaConfig, KafkaDeadLetterSink, KafkaPublisher, KafkaRetrySink,
    KafkaSource, RetryTiers, TopicSpec, Topics, TransactionalPublishLayer,
};

/// The brokers and consumer group of a worker, and everything built from
/// them: topics, the source, the publisher and the two sinks.
///
/// Cheap to clone; clones share one publisher (and so one producer), which
/// the sinks use too.
#[derive(Clone, Debug)]
pub struct Kafka {
    config: KafkaConfig,
    publisher: Arc<Mutex<Option<KafkaPublisher>>>,
}

impl Kafka {
    /// `brokers` (`host:port,...`) and the consumer `group`, with the defaults of [`KafkaConfig::new`].
    pub fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        Kafka::from_config(KafkaConfig::new(brokers, group))
    }

    /// From a full configuration.
    pub fn from_config(config: KafkaConfig) -> Self {
        Kafka {
            config,
            publisher: Arc::new(Mutex::new(None)),
        }
    }

    /// Changes the configuration (before building anything from it).
    #[must_use]
    pub fn configure(mut self, change: impl FnOnce(&mut KafkaConfig)) -> Self {
        change(&mut self.config);
        self.publisher = Arc::new(Mutex::new(None));
        self
    }

    /// Sets a librdkafka property on every client.
    #[must_use]
    pub fn set(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.configure(|c| {
            c.properties.insert(key, value);
        })
    }

    /// Sets the delay tiers of non-blocking retries.
    #[must_use]
    pub fn retry_tiers(self, tiers: RetryTiers) -> Self {
        self.configure(|c| c.retry_tiers = tiers)
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// This group's DLQ topic for `topic`.
    pub fn dlq_topic(&self, topic: &str) -> String {
        dlq_topic(topic, &self.config.group)
    }

    /// This group's retry topics for `topic`, shortest tier first.
    pub fn retry_topics(&self, topic: &str) -> Vec<String> {
        self.config
            .retry_tiers
            .tiers()
            .iter()
            .map(|tier| retry_topic(topic, &self.config.group, tier))
            .collect()
    }

    /// One metadata round trip with the configured settings (security
    /// protocol, SASL, certificates), within `timeout`. Fails fast with
    /// librdkafka's explanation when the handshake or the authentication
    /// fails; call it at start-up to catch a misconfiguration at once.
    pub async fn check(&self, timeout: Duration) -> Result<(), Error> {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || crate::probe::check(&config, timeout))
            .await
            .map_err(|e| Error::Unreachable {
                brokers: self.config.brokers.clone(),
                reason: format!("the check did not finish: {e}"),
            })?
    }

    /// An admin handle for topics.
    pub fn topics(&self) -> Result<Topics, Error> {
        Topics::new(&self.config)
    }

    /// Creates each topic (a name or a [`TopicSpec`]) with this group's DLQ
    /// and retry topics (and, with [`ordered_retries`](Self::ordered_retries),
    /// its parked topic); existing ones are kept.
    pub async fn ensure_topics<T: Into<TopicSpec>>(
        &self,
        topics: impl IntoIterator<Item = T>,
    ) -> Result<(), Error> {
        let admin = self.topics()?;
        for spec in topics {
            admin
                .ensure_with_companions(&spec.into(), &self.config.group)
                .await?;
        }
        Ok(())
    }

    /// A source on `topics` and this group's retry topics for them, with at
    /// most `concurrency` unsettled deliveries (match the runner's concurrency).
    ///
    /// The DLQ and retry topics (and the parked topics of ordered retries)
    /// must exist when the runner starts
    /// ([`Source::preflight`](backstop::runner::Source::preflight)): create them with
    /// [`ensure_topics`](Self::ensure_topics);
    /// [`KafkaSource::skip_destination_check`] opts out. While it lives, the
    /// depth of its DLQ topics (letters not yet replayed or purged) is read
    /// every [`KafkaConfig::metrics_interval`](crate::KafkaConfig::metrics_interval)
    /// into `backstop_dlq_depth`.
    pub fn source(&self, topics: &[&str], concurrency: usize) -> Result<KafkaSource, Error> {
        let retry: Vec<(String, String)> = topics
            .iter()
            .flat_map(|t| {
                self.retry_topics(t)
                    .into_iter()
                    .map(|r| (r, (*t).to_owned()))
            })
            .collect();
        let dlqs: Vec<String> = topics.iter().map(|t| self.dlq_topic(t)).collect();
        let mut required = dlqs.clone();
        required.extend(retry.iter().map(|(r, _)| r.clone()));
        if self.config.ordered_retries {
            required.extend(topics.iter().map(|t| parked_topic(t, &self.config.group)));
        }
        KafkaSource::new(&self.config, topics, &retry, concurrency)?
            .require(required)
            .watch_dlqs(topics, &dlqs)
    }

    /// A source on exactly `topics` (no retry topics), e.g. to read a DLQ.
    pub fn plain_source(&self, topics: &[&str], concurrency: usize) -> Result<KafkaSource, Error> {
        KafkaSource::new(&self.config, topics, &[], concurrency)
    }

    /// The shared publisher.
    pub fn publisher(&self) -> Result<KafkaPublisher, Error> {
        let mut slot = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = KafkaPublisher::new(&self.config)?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// The DLQ writer for this group (`<topic>.<group>.dlq`).
    pub fn dead_letter_sink(&self) -> Result<KafkaDeadLetterSink, Error> {
        Ok(KafkaDeadLetterSink::new(
            self.publisher()?,
            self.config.group.clone(),
        ))
    }

    /// The delayed-retry writer for this group (`<topic>.<group>.retry.<tier>`).
    pub fn retry_sink(&self) -> Result<KafkaRetrySink, Error> {
        Ok(KafkaRetrySink::new(
            self.publisher()?,
            self.config.group.clone(),
            self.config.retry_tiers.clone(),
        ))
    }

    /// Lets handlers publish ([`Context::publish`](backstop::Context::publish)):
    /// into the delivery's transaction in exactly-once mode
    /// ([`KafkaConfig::exactly_once`]), else at once through the shared
    /// publisher; put it around each attempt
    /// ([`StackBuilder::around_attempt`](backstop::StackBuilder::around_attempt)).
    pub fn publish_layer(&self) -> Result<TransactionalPublishLayer, Error> {
        Ok(TransactionalPublishLayer::new(self.publisher()?))
    }

    /// Exactly-once mode for this running instance (see
    /// [`transaction`](crate::transaction)): `instance` is unique per
    /// running process and reused by its restart (the order worker's
    /// `--instance-id`).
    #[must_use]
    pub fn exactly_once(self, instance: &str) -> Self {
        let settings = ExactlyOnce::new(&self.config.group, instance);
        self.configure(|c| c.exactly_once = Some(settings))
    }

    /// Retries that keep per-key order (needs [`exactly_once`](Self::exactly_once)):
    /// see [`KafkaConfig::ordered_retries`]. [`ensure_topics`](Self::ensure_topics)
    /// then also creates each topic's parked topic.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), backstop_kafka::Error> {
    /// use backstop_kafka::Kafka;
    ///
    /// let kafka = Kafka::new("127.0.0.1:9092", "billing")
    ///     .exactly_once("worker-1")
    ///     .ordered_retries();
    /// kafka.ensure_topics(["orders"]).await?; // and orders.billing.parked
    /// let source = kafka.source(&["orders"], 32)?;
    /// # drop(source);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn ordered_retries(self) -> Self {
        self.configure(|c| c.ordered_retries = true)
    }

    /// The offsets this group committed on each partition of `topic`.
    pub async fn committed_offsets(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, Error> {
        self.topics()?
            .committed_offsets(topic, &self.config.group)
            .await
    }
}
