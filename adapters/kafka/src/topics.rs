//! Topic helpers: create topics with their partitions, replication and
//! `min.insync.replicas`, and a source topic's DLQ and retry topics with at
//! least its partitions and room for its largest message. A topic that
//! already exists is fine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::sinks::{dlq_topic, retry_topic};
use crate::{Error, KafkaConfig};

/// How long admin requests and metadata waits may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra room a DLQ or retry topic gets over its source's `max.message.bytes`,
/// for the headers a copy gains.
pub const HEADER_HEADROOM: usize = 16 * 1024;

/// What a topic should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The name.
    pub name: String,
    /// Partitions (default 1).
    pub partitions: i32,
    /// Replication factor (default 1).
    pub replication: i32,
    /// `min.insync.replicas`, if set.
    pub min_insync_replicas: Option<i32>,
    /// `max.message.bytes`, if set.
    pub max_message_bytes: Option<usize>,
    /// Other topic configs.
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// One partition, replication factor 1, broker defaults otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: 1,
            replication: 1,
            min_insync_replicas: None,
            max_message_bytes: None,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the partition count.
    #[must_use]
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn replication(mut self, n: i32) -> Self {
        self.replication = n.max(1);
        self
    }

    /// Sets `min.insync.replicas`.
    #[must_use]
    pub fn min_insync_replicas(mut self, n: i32) -> Self {
        self.min_insync_replicas = Some(n.max(1));
        self
    }

    /// Sets `max.message.bytes`.
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Sets another topic config.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .configs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(n) = self.min_insync_replicas {
            all.push(("min.insync.replicas".into(), n.to_string()));
        }
        if let Some(n) = self.max_message_bytes {
            all.push(("max.message.bytes".into(), n.to_string()));
        }
        all
    }
}

impl From<&str> for TopicSpec {
    fn from(name: &str) -> Self {
        TopicSpec::new(name)
    }
}

impl From<String> for TopicSpec {
    fn from(name: String) -> Self {
        TopicSpec::new(name)
    }
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
    /// metadata shows every one with at least its partitions.
    pub async fn create(&self, specs: &[TopicSpec]) -> Result<(), Error> {
        if specs.is_empty() {
            return Ok(());
        }
        let settings: Vec<Vec<(String, String)>> = specs.iter().map(TopicSpec::settings).collect();
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&settings)
            .map(|(spec, settings)| {
                settings.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication),
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
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Topic {
                        topic,
                        what: "create",
                        code,
                    });
                }
            }
        }
        for spec in specs {
            self.wait_for(&spec.name, spec.partitions).await?;
        }
        Ok(())
    }

    /// Creates `source` and, for `group`, its DLQ and its retry topics (one
    /// per tier of the config), each with at least the source's partitions
    /// and its `max.message.bytes` plus [`HEADER_HEADROOM`]. Companions that
    /// exist with fewer partitions are grown.
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
        let mut names = vec![dlq_topic(&source.name, group)];
        names.extend(
            self.config
                .retry_tiers
                .tiers()
                .iter()
                .map(|tier| retry_topic(&source.name, group, tier)),
        );
        let companions: Vec<TopicSpec> = names
            .into_iter()
            .map(|name| {
                let mut spec = TopicSpec::new(name)
                    .partitions(partitions)
                    .replication(source.replication);
                spec.min_insync_replicas = source.min_insync_replicas;
                spec.max_message_bytes = max_bytes.map(|n| n + HEADER_HEADROOM);
                spec
            })
            .collect();
        self.create(&companions).await?;
        for spec in &companions {
            self.grow(&spec.name, partitions).await?;
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
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
                .filter(|n| *n > 0))
        })
        .await
    }

    /// The topic's `max.message.bytes`, if it exists.
    pub async fn max_message_bytes(&self, topic: &str) -> Result<Option<usize>, Error> {
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
                .get("max.message.bytes")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse().ok()));
        }
        Ok(None)
    }

    /// The end offset (high watermark) of each partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, Error> {
        let partitions = self
            .partitions(topic)
            .await?
            .ok_or_else(|| Error::MissingTopic(topic.to_owned()))?;
        let admin = Arc::clone(&self.admin);
        let name = topic.to_owned();
        blocking(move || {
            (0..partitions)
                .map(|p| {
                    admin
                        .inner()
                        .fetch_watermarks(&name, p, ADMIN_TIMEOUT)
                        .map(|(_, high)| (p, high))
                        .map_err(Error::kafka(format!("reading the end offsets of {name}")))
                })
                .collect()
        })
        .await
    }

    /// The offsets `group` committed on each partition of `topic` (`None`:
    /// nothing committed yet).
    pub async fn committed_offsets(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, Error> {
        let partitions = self
            .partitions(topic)
            .await?
            .ok_or_else(|| Error::MissingTopic(topic.to_owned()))?;
        let mut config = self.config.clone();
        config.group = group.to_owned();
        let reader: BaseConsumer = config
            .offsets_reader_config()
            .create()
            .map_err(Error::Config)?;
        let name = topic.to_owned();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&name, p);
            }
            let committed = reader
                .committed_offsets(tpl, ADMIN_TIMEOUT)
                .map_err(Error::kafka(format!(
                    "reading the committed offsets of {name}"
                )))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    };
                    (e.partition(), offset)
                })
                .collect())
        })
        .await
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Thread(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_settings_carry_isr_and_size() {
        let spec = TopicSpec::new("t")
            .partitions(4)
            .min_insync_replicas(2)
            .max_message_bytes(2_000_000)
            .config("retention.ms", "1000");
        let settings = spec.settings();
        assert!(settings.contains(&("min.insync.replicas".into(), "2".into())));
        assert!(settings.contains(&("max.message.bytes".into(), "2000000".into())));
        assert!(settings.contains(&("retention.ms".into(), "1000".into())));
        assert_eq!(spec.partitions, 4);
    }
}
