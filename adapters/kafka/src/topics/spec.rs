//! [`TopicSpec`]: what a topic should look like, and the specs of a source
//! topic's companions (its DLQ, retry and parked topics) derived from it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::RetryTier;
use crate::names::parked_topic;

/// Extra room a DLQ or retry topic gets over its source's `max.message.bytes`,
/// for the headers a copy gains.
pub const HEADER_HEADROOM: usize = 16 * 1024;
/// The replication factor the helpers aim for when the spec does not set one.
pub(super) const SAFE_REPLICATION: i32 = 3;
/// The shortest retention a retry topic gets by default (Kafka's own default).
pub(super) const MIN_RETRY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a topic should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The name.
    pub name: String,
    /// Partitions (default 1).
    pub partitions: i32,
    /// Replication factor; `None` (the default): min(3, brokers in the cluster).
    pub replication: Option<i32>,
    /// `min.insync.replicas`; `None` (the default): replication − 1, at least 1.
    pub min_insync_replicas: Option<i32>,
    /// `max.message.bytes`, if set.
    pub max_message_bytes: Option<usize>,
    /// Other topic configs.
    pub configs: BTreeMap<String, String>,
    /// Topic configs for this topic's DLQ and retry topics (created by
    /// [`Topics::ensure_with_companions`](super::Topics::ensure_with_companions)); they override the defaults there,
    /// e.g. `retention.ms`.
    pub companion_configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// One partition, the safe replication defaults (see
    /// [`TopicSpec::replication`] and [`TopicSpec::min_insync_replicas`]),
    /// broker defaults otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: 1,
            replication: None,
            min_insync_replicas: None,
            max_message_bytes: None,
            configs: BTreeMap::new(),
            companion_configs: BTreeMap::new(),
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
        self.replication = Some(n.max(1));
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

    /// Sets a topic config of this topic's DLQ and retry topics (overriding
    /// the helpers' defaults, e.g. `retention.ms`).
    #[must_use]
    pub fn companion_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.companion_configs.insert(key.into(), value.into());
        self
    }

    /// The replication factor and `min.insync.replicas` on a cluster of `brokers`.
    pub(super) fn replicas(&self, brokers: usize) -> (i32, i32) {
        let replication = self.replication.unwrap_or_else(|| {
            i32::try_from(brokers)
                .unwrap_or(i32::MAX)
                .clamp(1, SAFE_REPLICATION)
        });
        let isr = self
            .min_insync_replicas
            .unwrap_or_else(|| (replication - 1).max(1));
        (replication, isr)
    }

    pub(super) fn settings(&self, min_insync_replicas: i32) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .configs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.push((
            "min.insync.replicas".into(),
            min_insync_replicas.to_string(),
        ));
        if let Some(n) = self.max_message_bytes {
            all.push(("max.message.bytes".into(), n.to_string()));
        }
        all
    }
}

/// The spec of one companion (DLQ or retry topic) of `source`.
pub(super) fn companion(
    source: &TopicSpec,
    name: String,
    partitions: i32,
    max_bytes: Option<usize>,
    defaults: &[(&str, String)],
) -> TopicSpec {
    let mut spec = TopicSpec::new(name).partitions(partitions);
    spec.replication = source.replication;
    spec.min_insync_replicas = source.min_insync_replicas;
    spec.max_message_bytes = max_bytes.map(|n| n + HEADER_HEADROOM);
    for (k, v) in defaults {
        spec.configs.insert((*k).to_owned(), v.clone());
    }
    spec.configs.extend(source.companion_configs.clone());
    spec
}

/// The parked topic of `source` for `group` (ordered retries; see
/// [`parking`](crate::parking)): compacted (its latest record per key is
/// the state), with the source's partitions (each main partition's records
/// go to its own), its records deleted keys forgotten after an hour.
pub(super) fn parked_companion(
    source: &TopicSpec,
    group: &str,
    partitions: i32,
    max_bytes: Option<usize>,
) -> TopicSpec {
    let mut spec = companion(
        source,
        parked_topic(&source.name, group),
        partitions,
        max_bytes,
        &[],
    );
    // The state's own settings win over the companions' overrides.
    for (k, v) in [
        ("cleanup.policy", "compact"),
        ("segment.ms", "3600000"),
        ("delete.retention.ms", "3600000"),
        ("min.cleanable.dirty.ratio", "0.1"),
        ("retention.ms", "-1"),
    ] {
        spec.configs.insert(k.to_owned(), v.to_owned());
    }
    spec
}

/// A retry tier's retention: 4 × its delay, at least [`MIN_RETRY_RETENTION`].
pub(super) fn retry_retention(tier: &RetryTier) -> Duration {
    tier.delay().saturating_mul(4).max(MIN_RETRY_RETENTION)
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
