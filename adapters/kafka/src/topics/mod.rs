//! Topic helpers: create topics with their partitions, replication and
//! `min.insync.replicas`, and a source topic's DLQ and retry topics with at
//! least its partitions, room for its largest message and a retention that
//! never drops a dead letter. A topic that already exists is fine.
//!
//! Defaults a Kafka operator expects, unless the spec says otherwise:
//!
//! * replication factor min(3, brokers in the cluster) and
//!   `min.insync.replicas` = replication − 1 (at least 1); on a cluster of
//!   fewer than 3 brokers the helper logs a warning that says so;
//! * DLQ topics keep their letters forever (`retention.ms=-1`,
//!   `retention.bytes=-1`): a dead letter waits for an operator;
//! * retry topics keep their copies for at least 4 × their tier's delay
//!   (and at least 7 days), whatever the broker's default;
//! * with [`KafkaConfig::ordered_retries`], the parked topic is compacted
//!   and has the source's partitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::blocking::blocking;
use crate::names::{dlq_topic, retry_topic};
use crate::{Error, KafkaConfig};

mod offsets;
mod spec;

pub use self::spec::{HEADER_HEADROOM, TopicSpec};
use self::spec::{SAFE_REPLICATION, companion, parked_companion, retry_retention};

/// How long admin requests and metadata waits may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How many partitions `topic` has in `metadata`; `None` when it is not
/// there (or has none).
pub fn partition_count(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
        .filter(|n| *n > 0)
}

/// Creates and inspects topics through the admin API.
#[derive(Clone)]
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: KafkaConfig,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

impl Topics {
    /// An admin client for `config.brokers`.
    pub fn new(config: &KafkaConfig) -> Result<Self, Error> {
        let admin = config.admin_config().create().map_err(Error::Config)?;
        Ok(Topics {
            admin: Arc::new(admin),
            config: config.clone(),
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT))
    }

    /// Creates the topics that do not exist yet, and waits until the cluster
    /// metadata shows every one with at least its partitions. A spec without
    /// a replication factor gets min(3, brokers in the cluster), and without
    /// `min.insync.replicas` replication − 1 (at least 1); a fallback below
    /// 3 replicas is logged as a warning.
    pub async fn create(&self, specs: &[TopicSpec]) -> Result<(), Error> {
        if specs.is_empty() {
            return Ok(());
        }
        let brokers = if specs.iter().any(|s| s.replication.is_none()) {
            self.brokers().await?
        } else {
            0
        };
        let replicas: Vec<(i32, i32)> = specs.iter().map(|s| s.replicas(brokers)).collect();
        let settings: Vec<Vec<(String, String)>> = specs
            .iter()
            .zip(&replicas)
            .map(|(spec, (_, isr))| spec.settings(*isr))
            .collect();
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&settings)
            .zip(&replicas)
            .map(|((spec, settings), (replication, _))| {
                settings.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(*replication),
                    ),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(&new, &Self::options())
            .await
            .map_err(Error::kafka("creating topics"))?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(topic) => created.push(topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Topic {
                        topic,
                        what: "create",
                        code,
                    });
                }
            }
        }
        let fallen_back: Vec<&str> = specs
            .iter()
            .zip(&replicas)
            .filter(|(spec, (replication, _))| {
                spec.replication.is_none() && *replication < SAFE_REPLICATION
            })
            .map(|(spec, _)| spec.name.as_str())
            .filter(|name| created.iter().any(|c| c == name))
            .collect();
        if !fallen_back.is_empty() {
            let (replication, isr) = TopicSpec::new("").replicas(brokers);
            tracing::warn!(
                topics = ?fallen_back, brokers, replication, min_insync_replicas = isr,
                "the cluster has fewer than {SAFE_REPLICATION} brokers: these topics get replication \
                 factor {replication} and min.insync.replicas {isr}; a broker loss can lose \
                 acknowledged messages"
            );
        }
        for spec in specs {
            self.wait_for(&spec.name, spec.partitions).await?;
        }
        Ok(())
    }

    /// The number of brokers in the cluster.
    pub async fn brokers(&self) -> Result<usize, Error> {
        let admin = Arc::clone(&self.admin);
        blocking(move || {
            let metadata = admin
                .inner()
                .fetch_metadata(None, ADMIN_TIMEOUT)
                .map_err(Error::kafka("reading the cluster metadata"))?;
            Ok(metadata.brokers().len())
        })
        .await
    }

    /// Creates `source` and, for `group`, its DLQ and its retry topics (one
    /// per tier of the config), each with at least the source's partitions
    /// and its `max.message.bytes` plus [`HEADER_HEADROOM`]. The DLQ keeps
    /// its letters forever and each retry topic keeps its copies for at
    /// least 4 × its delay, and at least 7 days;
    /// [`TopicSpec::companion_config`] overrides that. Companions that exist
    /// with fewer partitions are grown; their configs are kept.
    ///
    /// Fails with [`Error::TooLarge`] when the source accepts records that,
    /// with backstop's headers, are larger than the producer sends
    /// ([`KafkaConfig::max_message_bytes`]): their dead letters could never
    /// be written.
    pub async fn ensure_with_companions(
        &self,
        source: &TopicSpec,
        group: &str,
    ) -> Result<(), Error> {
        self.create(std::slice::from_ref(source)).await?;
        let partitions = self
            .partitions(&source.name)
            .await?
            .map_or(source.partitions, |n| n.max(source.partitions));
        let max_bytes = match source.max_message_bytes {
            Some(n) => Some(n),
            None => self.max_message_bytes(&source.name).await?,
        };
        if let Some(n) = max_bytes
            && n + HEADER_HEADROOM > self.config.max_message_bytes
        {
            return Err(Error::TooLarge {
                topic: source.name.clone(),
                accepts: n,
                producer: self.config.max_message_bytes,
            });
        }
        let forever = [
            ("retention.ms", "-1".to_owned()),
            ("retention.bytes", "-1".to_owned()),
        ];
        let mut companions = vec![companion(
            source,
            dlq_topic(&source.name, group),
            partitions,
            max_bytes,
            &forever,
        )];
        for tier in self.config.retry_tiers.tiers() {
            let retention = retry_retention(tier).as_millis().to_string();
            companions.push(companion(
                source,
                retry_topic(&source.name, group, tier),
                partitions,
                max_bytes,
                &[("retention.ms", retention)],
            ));
        }
        if self.config.ordered_retries {
            companions.push(parked_companion(source, group, partitions, max_bytes));
        }
        self.create(&companions).await?;
        for spec in &companions {
            self.grow(&spec.name, partitions).await?;
        }
        self.warn_on_expiring_dlq(&companions[0]).await
    }

    /// An existing DLQ keeps its configs; say so when its letters expire
    /// (and the spec did not ask for that).
    async fn warn_on_expiring_dlq(&self, dlq: &TopicSpec) -> Result<(), Error> {
        let configs = self.configs(&dlq.name).await?;
        for key in ["retention.ms", "retention.bytes"] {
            let wanted = dlq.configs.get(key);
            let Some(value) = configs.get(key) else {
                continue;
            };
            if wanted == Some(value) || value.parse::<i64>().is_ok_and(|v| v < 0) {
                continue;
            }
            tracing::warn!(
                topic = %dlq.name, key, value,
                "this existing DLQ deletes dead letters by {key}={value}; \
                 set {key}=-1 (kafka-configs --alter) so letters wait for an operator"
            );
        }
        Ok(())
    }

    /// Adds partitions to `topic` so that it has at least `partitions`.
    pub async fn grow(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        let current = self.partitions(topic).await?.unwrap_or(0);
        if current >= partitions {
            return Ok(());
        }
        let wanted = usize::try_from(partitions).unwrap_or(1);
        let results = self
            .admin
            .create_partitions(&[NewPartitions::new(topic, wanted)], &Self::options())
            .await
            .map_err(Error::kafka(format!("adding partitions to {topic}")))?;
        for result in results {
            if let Err((topic, code)) = result
                && code != RDKafkaErrorCode::InvalidPartitions
            {
                return Err(Error::Topic {
                    topic,
                    what: "add partitions",
                    code,
                });
            }
        }
        self.wait_for(topic, partitions).await
    }

    /// Deletes topics; missing ones are fine.
    pub async fn delete(&self, topics: &[&str]) -> Result<(), Error> {
        let results = self
            .admin
            .delete_topics(topics, &Self::options())
            .await
            .map_err(Error::kafka("deleting topics"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(Error::Topic {
                        topic,
                        what: "delete",
                        code,
                    });
                }
            }
        }
        Ok(())
    }

    /// The partition count of `topic`, or `None` if it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, Error> {
        let admin = Arc::clone(&self.admin);
        let name = topic.to_owned();
        blocking(move || {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&name), ADMIN_TIMEOUT)
                .map_err(Error::kafka(format!("reading the metadata of {name}")))?;
            Ok(partition_count(&metadata, &name))
        })
        .await
    }

    /// The topic's `max.message.bytes`, if it exists.
    pub async fn max_message_bytes(&self, topic: &str) -> Result<Option<usize>, Error> {
        Ok(self
            .configs(topic)
            .await?
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok()))
    }

    /// The topic's effective configs (its own and the broker defaults it
    /// inherits); empty if it does not exist.
    pub async fn configs(&self, topic: &str) -> Result<BTreeMap<String, String>, Error> {
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &Self::options())
            .await
            .map_err(Error::kafka(format!("describing {topic}")))?;
        for resource in results.into_iter().flatten() {
            if resource.specifier != OwnedResourceSpecifier::Topic(topic.to_owned()) {
                continue;
            }
            return Ok(resource
                .entries
                .into_iter()
                .filter_map(|e| e.value.map(|v| (e.name, v)))
                .collect());
        }
        Ok(BTreeMap::new())
    }

    async fn wait_for(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        let until = Instant::now() + ADMIN_TIMEOUT;
        loop {
            if self
                .partitions(topic)
                .await?
                .is_some_and(|n| n >= partitions)
            {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(Error::MissingTopic(topic.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spec::MIN_RETRY_RETENTION;
    use super::*;
    use crate::RetryTier;

    #[test]
    fn spec_settings_carry_isr_and_size() {
        let spec = TopicSpec::new("t")
            .partitions(4)
            .min_insync_replicas(2)
            .max_message_bytes(2_000_000)
            .config("retention.ms", "1000");
        let (_, isr) = spec.replicas(5);
        let settings = spec.settings(isr);
        assert!(settings.contains(&("min.insync.replicas".into(), "2".into())));
        assert!(settings.contains(&("max.message.bytes".into(), "2000000".into())));
        assert!(settings.contains(&("retention.ms".into(), "1000".into())));
        assert_eq!(spec.partitions, 4);
    }

    #[test]
    fn replication_defaults_to_min_3_brokers_and_isr_one_less() {
        let spec = TopicSpec::new("t");
        assert_eq!(spec.replicas(1), (1, 1));
        assert_eq!(spec.replicas(2), (2, 1));
        assert_eq!(spec.replicas(3), (3, 2));
        assert_eq!(spec.replicas(9), (3, 2));
        assert_eq!(spec.clone().replication(5).replicas(9), (5, 4));
        assert_eq!(spec.min_insync_replicas(3).replicas(9), (3, 3));
    }

    #[test]
    fn retry_retention_is_at_least_four_delays() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            retry_retention(&RetryTier::new(Duration::from_secs(5))),
            MIN_RETRY_RETENTION
        );
        assert_eq!(retry_retention(&RetryTier::new(3 * day)), 12 * day);
    }

    #[test]
    fn companions_take_the_users_configs_over_the_defaults() {
        let source = TopicSpec::new("orders")
            .replication(2)
            .companion_config("retention.ms", "86400000");
        let dlq = companion(
            &source,
            "orders.g.dlq".into(),
            3,
            Some(1_000_000),
            &[
                ("retention.ms", "-1".into()),
                ("retention.bytes", "-1".into()),
            ],
        );
        assert_eq!(dlq.configs["retention.ms"], "86400000");
        assert_eq!(dlq.configs["retention.bytes"], "-1");
        assert_eq!(dlq.max_message_bytes, Some(1_000_000 + HEADER_HEADROOM));
        assert_eq!((dlq.partitions, dlq.replication), (3, Some(2)));
    }
}
