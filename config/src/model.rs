//! The [`WorkerConfig`] and its sections, as read from the file, the
//! environment and flags. Every section refuses unknown keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretUrl};

/// Everything one worker process needs: its broker, its sources, the
/// per-consumer settings, the idempotency store, the kill switch, the
/// shutdown deadline and telemetry.
///
/// ```
/// let config: backstop_config::WorkerConfig = backstop_config::Loader::new()
///     .env_vars(Vec::<(String, String)>::new())
///     .flag("--concurrency", "defaults.concurrency", 8)
///     .load()?;
/// assert_eq!(config.sources()[0].settings.concurrency, 8);
/// # Ok::<(), backstop_config::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// `[broker]`: where messages come from.
    pub broker: BrokerConfig,
    /// `[defaults]`: per-consumer settings for every source.
    pub defaults: ConsumerSettings,
    /// `[sources.<name>]`: the queues or topics this process consumes, each
    /// with its own runner; none means one source named `orders`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[store]`: where idempotency keys live.
    pub store: StoreConfig,
    /// `[breaker]`: the kill switch (the outage budget).
    pub breaker: BreakerSettings,
    /// `[shutdown]`: how long a graceful stop may take.
    pub shutdown: ShutdownSettings,
    /// `[telemetry]`: metrics and logs.
    pub telemetry: TelemetryConfig,
}

/// Which broker a worker consumes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The in-process broker of `backstop::memory` (tests, demos).
    #[default]
    Memory,
    /// RabbitMQ (AMQP 0-9-1).
    Rabbitmq,
    /// Kafka.
    Kafka,
}

/// `[broker]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory`, `rabbitmq` or `kafka`.
    pub kind: BrokerKind,
    /// The AMQP URL (RabbitMQ) or the bootstrap servers (Kafka). Default
    /// from `BACKSTOP_AMQP_URL` / `BACKSTOP_KAFKA_BROKERS`, else the local broker.
    pub url: Option<SecretUrl>,
    /// The Kafka consumer group (a source may name its own).
    pub group: String,
    /// A user name: RabbitMQ's (put into the URL) or Kafka's SASL user.
    pub username: Option<String>,
    /// Its password (`@/path` reads a file).
    pub password: Option<Secret>,
    /// A file holding the password (a mounted secret); not with `password`.
    pub password_file: Option<PathBuf>,
    /// Kafka's SASL mechanism with a `username` (default `SCRAM-SHA-512`).
    pub sasl_mechanism: Option<String>,
    /// `[broker.tls]`: TLS to the broker.
    pub tls: Option<TlsConfig>,
    /// `[broker.kafka_options]`: librdkafka properties, applied last
    /// (`"sasl.password" = "@/run/secrets/kafka"` reads a file).
    pub kafka_options: BTreeMap<String, Secret>,
    /// Kafka: a stable instance id (static group membership,
    /// `group.instance.id`), if any; unique per worker process.
    pub instance_id: Option<String>,
    /// RabbitMQ: the broker's `consumer_timeout` in milliseconds; a
    /// delivery is postponed before it runs out.
    pub consumer_timeout_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::default(),
            url: None,
            group: "order-worker".to_owned(),
            username: None,
            password: None,
            password_file: None,
            sasl_mechanism: None,
            tls: None,
            kafka_options: BTreeMap::new(),
            instance_id: None,
            consumer_timeout_ms: 30 * 60 * 1000,
        }
    }
}

/// `[broker.tls]`: the files a TLS client uses (read on every connection).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CAs to trust (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM client key (mutual TLS), with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `false` accepts any server certificate (tests only).
    pub verify: Option<bool>,
    /// The name the server's certificate must carry, when it differs from the host.
    pub server_name: Option<String>,
}

/// Settings one consumer may override; a key left out keeps the value of
/// the layer below (`[defaults]`, then the code's defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Messages in flight at once (and the RabbitMQ prefetch). Default 32.
    pub concurrency: Option<usize>,
    /// Attempts per message before it is dead-lettered. Default 5.
    pub max_attempts: Option<u32>,
    /// Larger bodies are dead-lettered as `too_large`. Default 1 MiB.
    pub max_payload_bytes: Option<usize>,
    /// Timeout of one handler run in milliseconds. Default 30 s.
    pub timeout_ms: Option<u64>,
    /// First retry backoff in milliseconds. Default 50.
    pub backoff_initial_ms: Option<u64>,
    /// Largest retry backoff in milliseconds. Default 5 s.
    pub backoff_max_ms: Option<u64>,
    /// Messages older than this many milliseconds (by their timestamp), or
    /// past their `expires-at` header, are not run. Default: none expire.
    pub time_to_live_ms: Option<u64>,
    /// Expired messages are acked unrun and counted instead of
    /// dead-lettered as `expired`. Default false.
    pub discard_expired: Option<bool>,
}

impl ConsumerSettings {
    /// `self` with every key it leaves out taken from `below`.
    pub fn over(&self, below: &ConsumerSettings) -> ConsumerSettings {
        ConsumerSettings {
            concurrency: self.concurrency.or(below.concurrency),
            max_attempts: self.max_attempts.or(below.max_attempts),
            max_payload_bytes: self.max_payload_bytes.or(below.max_payload_bytes),
            timeout_ms: self.timeout_ms.or(below.timeout_ms),
            backoff_initial_ms: self.backoff_initial_ms.or(below.backoff_initial_ms),
            backoff_max_ms: self.backoff_max_ms.or(below.backoff_max_ms),
            time_to_live_ms: self.time_to_live_ms.or(below.time_to_live_ms),
            discard_expired: self.discard_expired.or(below.discard_expired),
        }
    }

    /// The keys set, for a stack or a derived handler's `runner_with`
    /// (only these override the code's or the attributes' values).
    pub fn to_core(&self) -> backstop::settings::Settings {
        backstop::settings::Settings {
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            max_payload_bytes: self.max_payload_bytes,
            timeout: self.timeout_ms.map(Duration::from_millis),
            backoff_initial: self.backoff_initial_ms.map(Duration::from_millis),
            backoff_max: self.backoff_max_ms.map(Duration::from_millis),
            time_to_live: self
                .time_to_live_ms
                .map(|ms| time_to_live(ms, self.discard_expired.unwrap_or(false))),
        }
    }

    /// Every key resolved, the code's defaults for those left out.
    pub fn resolve(&self) -> Settings {
        let d = Settings::default();
        Settings {
            concurrency: self.concurrency.unwrap_or(d.concurrency).max(1),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts).max(1),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(d.max_payload_bytes),
            timeout: self.timeout_ms.map_or(d.timeout, Duration::from_millis),
            backoff_initial: self
                .backoff_initial_ms
                .map_or(d.backoff_initial, Duration::from_millis),
            backoff_max: self
                .backoff_max_ms
                .map_or(d.backoff_max, Duration::from_millis),
            time_to_live: self
                .time_to_live_ms
                .map(|ms| time_to_live(ms, self.discard_expired.unwrap_or(false))),
        }
    }
}

/// The stack's time to live of `ms` milliseconds, discarding or not.
fn time_to_live(ms: u64, discard: bool) -> backstop::expiry::TimeToLive {
    let ttl = backstop::expiry::TimeToLive::max_age(Duration::from_millis(ms));
    if discard { ttl.discard() } else { ttl }
}

/// A consumer's settings with every key resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Messages in flight at once.
    pub concurrency: usize,
    /// Attempts per message.
    pub max_attempts: u32,
    /// The largest body handled.
    pub max_payload_bytes: usize,
    /// Timeout of one handler run.
    pub timeout: Duration,
    /// First retry backoff.
    pub backoff_initial: Duration,
    /// Largest retry backoff.
    pub backoff_max: Duration,
    /// The time to live, if messages expire.
    pub time_to_live: Option<backstop::expiry::TimeToLive>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 32,
            max_attempts: 5,
            max_payload_bytes: 1024 * 1024,
            timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            time_to_live: None,
        }
    }
}

/// `[sources.<name>]`: one queue or topic and its handler.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// The queue or topic (default: the table's name).
    pub queue: Option<String>,
    /// Kafka: this source's consumer group (default: `broker.group`).
    pub group: Option<String>,
    /// The handler's name, for workers with several (the order worker has one).
    pub handler: Option<String>,
    /// Overrides `defaults.concurrency`.
    pub concurrency: Option<usize>,
    /// Overrides `defaults.max_attempts`.
    pub max_attempts: Option<u32>,
    /// Overrides `defaults.max_payload_bytes`.
    pub max_payload_bytes: Option<usize>,
    /// Overrides `defaults.timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// Overrides `defaults.backoff_initial_ms`.
    pub backoff_initial_ms: Option<u64>,
    /// Overrides `defaults.backoff_max_ms`.
    pub backoff_max_ms: Option<u64>,
    /// Overrides `defaults.time_to_live_ms`.
    pub time_to_live_ms: Option<u64>,
    /// Overrides `defaults.discard_expired`.
    pub discard_expired: Option<bool>,
}

impl SourceConfig {
    /// The settings this source sets (only those).
    pub fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            max_payload_bytes: self.max_payload_bytes,
            timeout_ms: self.timeout_ms,
            backoff_initial_ms: self.backoff_initial_ms,
            backoff_max_ms: self.backoff_max_ms,
            time_to_live_ms: self.time_to_live_ms,
            discard_expired: self.discard_expired,
        }
    }
}

/// One source with everything resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The table's name.
    pub name: String,
    /// The queue or topic.
    pub queue: String,
    /// The Kafka consumer group.
    pub group: String,
    /// The handler's name, if one was named.
    pub handler: Option<String>,
    /// The settings (source over `[defaults]` over the code's defaults).
    pub settings: Settings,
}

/// Where idempotency keys live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// In the process (lost on restart).
    #[default]
    Memory,
    /// Redis (`store.redis_url`).
    Redis,
    /// PostgreSQL (`store.postgres_url`).
    Postgres,
    /// PostgreSQL with the transactional inbox.
    PostgresInbox,
}

/// What to do with a shared store that holds an earlier release's global keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyLayoutKind {
    /// Per-consumer keyspaces; a store with global keys is refused.
    #[default]
    Keyspaced,
    /// Keep the global keys.
    Legacy,
    /// Per-consumer keyspaces, the global keys read as well for the window.
    Migrate,
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory`, `redis`, `postgres` or `postgres-inbox`.
    pub kind: StoreKind,
    /// Redis URL (default from `BACKSTOP_REDIS_URL`, else the local one).
    pub redis_url: Option<SecretUrl>,
    /// PostgreSQL URL (default from `BACKSTOP_PG_URL`, else the local one).
    pub postgres_url: Option<SecretUrl>,
    /// The lease in milliseconds (default: the store's), renewed every third.
    pub lease_ms: Option<u64>,
    /// A service name added to the keyspace.
    pub service: Option<String>,
    /// The key layout.
    pub key_layout: KeyLayoutKind,
    /// With `migrate`: how long both layouts are read, in seconds.
    pub migrate_window_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::default(),
            redis_url: None,
            postgres_url: None,
            lease_ms: None,
            service: None,
            key_layout: KeyLayoutKind::default(),
            migrate_window_secs: 48 * 3600,
        }
    }
}

/// `[breaker]`: stop consuming after this many outage signals in a row.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Outage signals in a row that open it; 0 turns it off. Default 5.
    pub trip_after: u32,
    /// How long it stays open before probing, in milliseconds. Default 10 s.
    pub cool_down_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            trip_after: 5,
            cool_down_ms: 10_000,
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long runs in flight may finish after a stop signal, in milliseconds. Default 20 s.
    pub deadline_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            deadline_ms: 20_000,
        }
    }
}

/// `[telemetry]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz` here (one endpoint for
    /// every source of the process).
    pub metrics_addr: Option<SocketAddr>,
    /// `/healthz` fails once a driver loop or a Kafka poll thread has not
    /// turned for this many seconds (idle loops turn every second) [default 60].
    pub stuck_after_secs: Option<u64>,
    /// A `tracing` filter (as `RUST_LOG`), used when `RUST_LOG` is not set.
    pub log: Option<String>,
}

impl WorkerConfig {
    /// What the configuration sets for the source `name` (its own keys over
    /// `[defaults]`), only the keys set: for `runner_with` of a
    /// `#[derive(Handler)]` type, whose attributes keep the rest.
    pub fn settings_for(&self, name: &str) -> backstop::settings::Settings {
        self.sources
            .get(name)
            .map_or_else(ConsumerSettings::default, SourceConfig::settings)
            .over(&self.defaults)
            .to_core()
    }

    /// The sources to run, each with its settings resolved (source over
    /// `[defaults]` over the code's defaults); one named `orders` when none is configured.
    pub fn sources(&self) -> Vec<ResolvedSource> {
        let resolve = |name: &str, source: &SourceConfig| ResolvedSource {
            name: name.to_owned(),
            queue: source.queue.clone().unwrap_or_else(|| name.to_owned()),
            group: source
                .group
                .clone()
                .unwrap_or_else(|| self.broker.group.clone()),
            handler: source.handler.clone(),
            settings: source.settings().over(&self.defaults).resolve(),
        };
        if self.sources.is_empty() {
            return vec![resolve("orders", &SourceConfig::default())];
        }
        self.sources
            .iter()
            .map(|(name, source)| resolve(name, source))
            .collect()
    }
}
