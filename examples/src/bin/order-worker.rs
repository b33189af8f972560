//! The order worker: one binary for every broker.
//!
//! ```text
//! cargo run --release -p backstop-examples --bin order-worker -- \
//!     --broker rabbitmq --source orders --concurrency 32
//! cargo run --release -p backstop-examples --bin order-worker -- \
//!     --broker kafka --url 127.0.0.1:9092 --source orders --group order-worker
//! cargo run --release -p backstop-examples --bin order-worker -- --broker memory --publish 1000
//! cargo run --release -p backstop-examples --bin order-worker -- --config examples/worker.toml
//! ```
//!
//! Every setting comes from the code's default, `--config FILE` (see
//! `examples/worker.toml`), `BACKSTOP_*` environment variables and the
//! flags, each over the one before (`backstop-config`); a bad configuration
//! exits with status 2 naming the key and where it was set. Each
//! `[sources.<name>]` is consumed by a runner of its own in this process.
//!
//! Orders are JSON `{"order_id": "...", "amount": <int>}`. The idempotency
//! key is `order_id`, else the message id. A negative amount is a permanent
//! validation error; a payload that is not such JSON is poison (kind
//! `decode`); a body over `--max-payload-bytes` is dead-lettered as
//! `too_large`. The worker declares its own topology (a quorum queue with its
//! DLQ and delay queues on RabbitMQ; the topic, its DLQ and retry topics on
//! Kafka). Dead letters go to `<queue>.dlq` (RabbitMQ, memory) or
//! `<topic>.<group>.dlq` (Kafka). With `--ledger`, every handler execution
//! inserts a row into `backstop_ledger(order_id, executed_at)`; with
//! `--store postgres-inbox` that row commits in the same transaction as the
//! inbox row, and a PostgreSQL idempotency store in front of the inbox
//! remembers dead-lettered keys, so a redelivery never dead-letters a
//! message twice; `--outbox EVENTS` adds two events per order (`placed`,
//! `charged`), written in that transaction through the outbox and relayed
//! to `EVENTS` by the one process holding the relay's lock; on Kafka,
//! `--events EVENTS` publishes them inside the transaction that commits the
//! order's offset (exactly once; the default there, `--at-least-once` turns
//! it off). In that mode a key whose message waits in a retry tier keeps
//! its later messages back until it is done (`--unordered-retries` lets
//! them run). Idempotency keys (and inbox rows) live in the
//! consumer's keyspace: the queue, or the topic and group, with `--service`
//! added. `--key-layout` says what to do with a shared store an earlier
//! release filled with global keys: refuse it (the default), keep that
//! layout (`legacy`), or `migrate` (both layouts are read for
//! `--migrate-window-secs`). SIGINT/SIGTERM stop it gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop::CancellationToken;
use backstop::breaker::BreakerConfig;
use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::idempotency::{self, KeyLayout, Namespaced};
use backstop::idempotency::{MemoryStore, Store};
use backstop::memory::MemoryBroker;
use backstop::metrics::MetricLabels;
use backstop::retry::RetrySink;
use backstop::runner::Source;
use backstop::{
    Context, Handle, KeySource, Message, Payload, RetryPolicy, Runner, Stack, StackBuilder, Summary,
};
use backstop_config::{
    BrokerKind, ConfigError, KeyLayoutKind, Loader, ResolvedSource, StoreConfig,
    StoreKind as ConfiguredStore, WorkerConfig,
};
use backstop_kafka::{Kafka, KafkaOption, TopicSpec};
use backstop_ops::Operations;
use backstop_postgres::{Inbox, InboxTx, Outbox, OutboxRelay, PgConfig, PostgresStore};
use backstop_rabbitmq::{RabbitMq, Topology};
use clap::{Parser, ValueEnum};
use rand::Rng;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Broker {
    Memory,
    Rabbitmq,
    Kafka,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// Per-consumer keyspaces; a store with keys of an earlier release is refused.
    Keyspaced,
    /// Keep an earlier release's global keys.
    Legacy,
    /// Upgrade: per-consumer keyspaces, the global keys read as well for the window.
    Migrate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Memory,
    Redis,
    Postgres,
    PostgresInbox,
}

/// Consumes orders through the full backstop stack. Every setting flag
/// overrides the same key of the configuration (`--config`, then the
/// `BACKSTOP_*` environment); see `examples/worker.toml`. No `Debug`:
/// `--url` and `--ledger` may hold passwords (prefer the file or the environment).
#[derive(Parser)]
#[command(name = "order-worker", version)]
struct Args {
    /// A TOML configuration file (see examples/worker.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which broker to consume from [broker.kind; default memory].
    #[arg(long, value_enum)]
    broker: Option<Broker>,
    /// AMQP URL (RabbitMQ) or bootstrap servers (Kafka) [broker.url; default
    /// from BACKSTOP_AMQP_URL or BACKSTOP_KAFKA_BROKERS]. Repeatable (or
    /// comma-separated) for the nodes of a cluster: a RabbitMQ worker fails
    /// over to the next node when its node is lost.
    #[arg(long)]
    url: Vec<String>,
    /// Kafka: static group membership (`group.instance.id`), unique per
    /// worker process [broker.instance_id]. A worker restarted with the same
    /// id within the session timeout gets its partitions back without a
    /// rebalance.
    #[arg(long)]
    instance_id: Option<String>,
    /// Kafka: hand off at least once instead of exactly once. By default a
    /// Kafka worker commits its dead letters and retry copies in one
    /// transaction with the offsets they follow from (its
    /// `transactional.id` is `<group>.<instance id>`: give each process an
    /// `--instance-id`, reused by its restart, so a restart aborts what its
    /// predecessor left open at once).
    #[arg(long)]
    at_least_once: bool,
    /// Kafka: let a key's later messages run while one of them waits in a
    /// retry tier. By default (exactly-once mode) they wait behind it in
    /// the parked topic (`<topic>.<group>.parked`) and run after it, in
    /// order; other keys keep flowing.
    #[arg(long)]
    unordered_retries: bool,
    /// Consume only this queue or topic (in place of the configured sources;
    /// a configured source of that name keeps its settings) [default orders].
    #[arg(long)]
    source: Option<String>,
    /// Kafka consumer group [broker.group; default order-worker].
    #[arg(long)]
    group: Option<String>,
    /// Kafka: a librdkafka property, KEY=VALUE (repeatable), applied after
    /// the configuration's; a secret may be KEY=@/path/to/file.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<backstop_kafka::KafkaOption>,
    /// Where idempotency keys live [store.kind; default memory].
    #[arg(long, value_enum)]
    store: Option<StoreKind>,
    /// PostgreSQL URL of the execution ledger, and then of the postgres
    /// stores too (same database and schema); else store.postgres_url
    /// (default from BACKSTOP_PG_URL).
    #[arg(long)]
    ledger: Option<String>,
    /// Messages in flight at once, and the RabbitMQ prefetch, for every
    /// source [defaults.concurrency; default 32].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Attempts per message before it is dead-lettered, every source
    /// [defaults.max_attempts; default 5].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Larger bodies are dead-lettered with kind `too_large`, every source
    /// [defaults.max_payload_bytes; default 1 MiB].
    #[arg(long)]
    max_payload_bytes: Option<usize>,
    /// Share of runs that fail transiently before doing anything (never the last attempt).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// The injected failures of `--fail-rate` ask to be retried in 2 s, past
    /// the in-process limit: they go through a retry tier.
    #[arg(long)]
    fail_later: bool,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464
    /// [telemetry.metrics_addr].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Publish this many sample orders to each source first.
    #[arg(long, default_value_t = 0)]
    publish: usize,
    /// Stop once the source is drained (memory broker only).
    #[arg(long)]
    until_drained: bool,
    /// Lease of the idempotency store in milliseconds [store.lease_ms;
    /// default 10 s with `postgres-inbox`, 30 s otherwise]; renewed every third of it.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Each run works this long (milliseconds) before its effect, stopping
    /// early on shutdown or a lost lease.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// A service name added to the idempotency keyspace (never in place of
    /// the queue, topic or group) and the inbox's consumer name (default:
    /// the group) [store.service].
    #[arg(long)]
    service: Option<String>,
    /// What to do with a shared store that holds global keys of an earlier
    /// release: refuse to start (keyspaced), keep them (legacy), or migrate
    /// [store.key_layout; default keyspaced].
    #[arg(long, value_enum)]
    key_layout: Option<Layout>,
    /// With `--key-layout migrate`: how long both layouts are read, from
    /// the first migrating start (longer than the rolling deploy and the
    /// store's 24 h TTL) [store.migrate_window_secs; default 48 h].
    #[arg(long)]
    migrate_window_secs: Option<u64>,
    /// The kill switch: stop consuming after this many outage signals in a
    /// row (store down, ledger or inbox unavailable; transient handler
    /// failures never count, so `--fail-rate` never trips it); 0 turns it
    /// off [breaker.trip_after; default 5].
    #[arg(long)]
    breaker_trip_after: Option<u32>,
    /// How long the kill switch stays open before probing, in milliseconds
    /// [breaker.cool_down_ms; default 10 s].
    #[arg(long)]
    breaker_cool_down_ms: Option<u64>,
    /// RabbitMQ: the broker's `consumer_timeout` in milliseconds (a 3.x
    /// client cannot read it); a delivery is postponed through its delay
    /// queue before it runs out [broker.consumer_timeout_ms; default 30 min].
    #[arg(long)]
    consumer_timeout_ms: Option<u64>,
    /// With `--store postgres-inbox`: each handled order publishes two
    /// events, `placed` then `charged` (key: the order id), to this queue
    /// or topic through the transactional outbox (written in the order's
    /// inbox transaction), and the worker runs an outbox relay (one
    /// process relays at a time).
    #[arg(long)]
    outbox: Option<String>,
    /// Kafka, exactly once, with `--store postgres-inbox`: each handled
    /// order publishes `placed` then `charged` to this topic inside the
    /// Kafka transaction that commits its offset (recorded in the order's
    /// inbox row, so a redelivery the inbox skips publishes them again into
    /// the next transaction).
    #[arg(long, conflicts_with = "outbox")]
    events: Option<String>,
    /// Fault injection: a run of this order id aborts the process
    /// (`std::process::abort`, no unwinding, nothing released).
    #[arg(long)]
    abort_on: Option<String>,
}

impl Args {
    /// The configuration: defaults < `--config` < environment < these flags.
    fn config(&self) -> Result<WorkerConfig, ConfigError> {
        let mut loader = Loader::new().file_opt(self.config.clone());
        let name = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        if let Some(broker) = self.broker {
            loader = loader.flag("--broker", "broker.kind", name(&broker));
        }
        if !self.url.is_empty() {
            loader = loader.flag("--url", "broker.url", self.url.join(","));
        }
        if let Some(id) = &self.instance_id {
            loader = loader.flag("--instance-id", "broker.instance_id", id);
        }
        if let Some(group) = &self.group {
            loader = loader.flag("--group", "broker.group", group);
        }
        if let Some(store) = self.store {
            let kind = match store {
                StoreKind::PostgresInbox => "postgres-inbox".to_owned(),
                other => name(&other),
            };
            loader = loader.flag("--store", "store.kind", kind);
        }
        if let Some(v) = self.concurrency {
            loader = loader.flag("--concurrency", "defaults.concurrency", v);
        }
        if let Some(v) = self.max_attempts {
            loader = loader.flag("--max-attempts", "defaults.max_attempts", v);
        }
        if let Some(v) = self.max_payload_bytes {
            loader = loader.flag("--max-payload-bytes", "defaults.max_payload_bytes", v);
        }
        if let Some(v) = self.metrics_addr {
            loader = loader.flag("--metrics-addr", "telemetry.metrics_addr", v.to_string());
        }
        if let Some(v) = self.lease_ms {
            loader = loader.flag("--lease-ms", "store.lease_ms", v);
        }
        if let Some(v) = &self.service {
            loader = loader.flag("--service", "store.service", v);
        }
        if let Some(v) = self.key_layout {
            loader = loader.flag("--key-layout", "store.key_layout", name(&v));
        }
        if let Some(v) = self.migrate_window_secs {
            loader = loader.flag("--migrate-window-secs", "store.migrate_window_secs", v);
        }
        if let Some(v) = self.breaker_trip_after {
            loader = loader.flag("--breaker-trip-after", "breaker.trip_after", v);
        }
        if let Some(v) = self.breaker_cool_down_ms {
            loader = loader.flag("--breaker-cool-down-ms", "breaker.cool_down_ms", v);
        }
        if let Some(v) = self.consumer_timeout_ms {
            loader = loader.flag("--consumer-timeout-ms", "broker.consumer_timeout_ms", v);
        }
        let mut config = loader.load()?;
        // A flag beats a source's own setting too.
        for source in config.sources.values_mut() {
            source.concurrency = self.concurrency.or(source.concurrency);
            source.max_attempts = self.max_attempts.or(source.max_attempts);
            source.max_payload_bytes = self.max_payload_bytes.or(source.max_payload_bytes);
        }
        if let Some(only) = &self.source {
            let kept = config.sources.remove(only).unwrap_or_default();
            config.sources = [(only.clone(), kept)].into();
        }
        Ok(config)
    }
}

/// An order.
#[derive(Clone, Debug, serde::Deserialize, backstop::Payload)]
struct Order {
    #[payload(key)]
    order_id: String,
    amount: i64,
}

#[derive(Debug, thiserror::Error, backstop::Classify)]
enum OrderError {
    #[error("order {0} has a negative amount")]
    #[classify(permanent)]
    Invalid(String),
    #[error("injected transient failure")]
    #[classify(transient)]
    Injected,
    #[error("injected transient failure, to be retried later")]
    #[classify(transient, retry_after = "2s")]
    InjectedLater,
    #[error("publishing the order's event failed: {0}")]
    #[classify(transient)]
    Publish(#[source] backstop::outgoing::PublishFailed),
    #[error("the order's event cannot be published: {0}")]
    #[classify(permanent)]
    PublishRefused(#[source] backstop::outgoing::PublishFailed),
    #[error("ledger write failed: {0}")]
    #[classify(transient)]
    Ledger(BoxError),
    #[error("stopped: shutdown or a lost lease")]
    #[classify(transient)]
    Cancelled,
}

/// Where an execution is recorded.
#[derive(Clone)]
enum Ledger {
    None,
    Pool(deadpool_postgres::Pool),
    Inbox,
}

/// The lease of the idempotency store in front of the inbox: after a
/// `kill -9`, the keys the dead worker held are retried (deferred as busy)
/// until their leases run out, so a short one keeps recovery quick; live
/// workers renew theirs every third of it.
const INBOX_STORE_LEASE: Duration = Duration::from_secs(10);

const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS backstop_ledger (order_id text NOT NULL, executed_at timestamptz NOT NULL DEFAULT now())";
const LEDGER_INSERT: &str = "INSERT INTO backstop_ledger (order_id) VALUES ($1)";

struct PlaceOrder {
    ledger: Ledger,
    /// Where the order's events go (through the outbox), if anywhere.
    events: Option<String>,
    fail_rate: f64,
    /// Injected failures go through a retry tier (`--fail-later`).
    fail_later: bool,
    max_attempts: u32,
    work: Duration,
    abort_on: Option<String>,
}

impl Handle<Order> for PlaceOrder {
    type Error = OrderError;

    async fn handle(&self, order: Order, ctx: Context) -> Result<(), OrderError> {
        if order.amount < 0 {
            return Err(OrderError::Invalid(order.order_id));
        }
        if ctx.attempt() < self.max_attempts && rand::rng().random::<f64>() < self.fail_rate {
            return Err(if self.fail_later {
                OrderError::InjectedLater
            } else {
                OrderError::Injected
            });
        }
        if !self.work.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.work) => {}
                () = ctx.cancellation().cancelled() => return Err(OrderError::Cancelled),
            }
        }
        if self.abort_on.as_deref() == Some(order.order_id.as_str()) {
            tracing::error!(order_id = %order.order_id, "injected crash: aborting the process");
            std::process::abort();
        }
        match &self.ledger {
            Ledger::None => {}
            Ledger::Pool(pool) => {
                let client = pool.get().await.map_err(|e| OrderError::Ledger(e.into()))?;
                client
                    .execute(LEDGER_INSERT, &[&order.order_id])
                    .await
                    .map_err(|e| OrderError::Ledger(e.into()))?;
            }
            Ledger::Inbox => {
                let tx = InboxTx::from_context(&ctx).map_err(|e| OrderError::Ledger(e.into()))?;
                tx.execute(LEDGER_INSERT, &[&order.order_id])
                    .await
                    .map_err(|e| OrderError::Ledger(e.into()))?;
            }
        }
        if let Some(events) = &self.events {
            for event in ["placed", "charged"] {
                let body = serde_json::json!({ "order_id": order.order_id, "event": event });
                let message = Message::new(body.to_string()).with_key(order.order_id.clone());
                ctx.publish(events, message).await.map_err(|e| {
                    if e.is_permanent() {
                        OrderError::PublishRefused(e)
                    } else {
                        OrderError::Publish(e)
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// The key layout of the configuration.
fn key_layout(store: &StoreConfig) -> KeyLayout {
    match store.key_layout {
        KeyLayoutKind::Keyspaced => KeyLayout::Keyspaced,
        KeyLayoutKind::Legacy => KeyLayout::Legacy,
        KeyLayoutKind::Migrate => KeyLayout::Migrate {
            window: Duration::from_secs(store.migrate_window_secs),
        },
    }
}

/// The PostgreSQL `application_name` of this process's connections
/// (`order-worker:<pid>`): `pg_stat_activity` and `pg_locks` show which
/// process holds what (the outbox relay's lock, say).
fn application_name() -> String {
    format!("order-worker:{}", std::process::id())
}

/// The ledger's URL, else the store's PostgreSQL URL: the ledger, the
/// inbox and the postgres stores share one database and schema.
fn pg_url(args: &Args, config: &WorkerConfig) -> String {
    args.ledger
        .clone()
        .unwrap_or_else(|| config.store.postgres_url().expose().to_owned())
}

/// The stack for one source, with the broker's sinks; and its outbox, when
/// `--outbox` asks for one (its relay is the caller's to start).
async fn stack(
    args: &Args,
    config: &WorkerConfig,
    source: &ResolvedSource,
    dead_letter: Arc<dyn DeadLetterSink>,
    retry: Option<Arc<dyn RetrySink>>,
    postpone: Option<Arc<dyn RetrySink>>,
    labels: MetricLabels,
) -> Result<(Stack, Option<Outbox>), BoxError> {
    let settings = &source.settings;
    let mut outbox = None;
    let store_config = &config.store;
    let mut ledger = Ledger::None;
    let mut builder = StackBuilder::<Order>::new(dead_letter)
        .metric_labels(labels)
        .retry(RetryPolicy {
            max_attempts: settings.max_attempts,
            ..RetryPolicy::default().backoff(settings.backoff_initial, settings.backoff_max)
        })
        .max_payload(settings.max_payload_bytes)
        .timeout(settings.timeout);
    if let Some(ttl) = settings.time_to_live {
        builder = builder.time_to_live(ttl);
    }
    if let Some(retry) = retry {
        builder = builder.retry_sink(retry);
    }
    if let Some(postpone) = postpone {
        builder = builder.postpone_through(postpone);
    }
    let pool = match (&args.ledger, store_config.kind) {
        (Some(_), _) | (None, ConfiguredStore::Postgres | ConfiguredStore::PostgresInbox) => {
            // Every in-flight message may hold one connection (the inbox's
            // transaction, or a ledger insert).
            let pool = PgConfig::new(pg_url(args, config))
                .application_name(application_name())
                .max_connections(settings.concurrency + 2)
                .pool()?;
            pool.get().await?.batch_execute(LEDGER_DDL).await?;
            if args.ledger.is_some() {
                ledger = Ledger::Pool(pool.clone());
            }
            Some(pool)
        }
        _ => None,
    };
    let key = KeySource::PayloadOrMessageId;
    let lease = |default| store_config.lease_ms.map_or(default, Duration::from_millis);
    let idempotency_config = idempotency::Config {
        lease: lease(idempotency::Config::default().lease),
        service: store_config.service.clone(),
        ..idempotency::Config::keyed_by(key.clone())
    };
    let layout = key_layout(store_config);
    builder = match (store_config.kind, pool) {
        (ConfiguredStore::Memory, _) => {
            builder.idempotency_with(Arc::new(MemoryStore::default()), idempotency_config)
        }
        (ConfiguredStore::Redis, _) => {
            let url = store_config.redis_url().expose().to_owned();
            let store: Arc<dyn Store> = Arc::new(
                backstop_redis::RedisStore::connect_with(
                    backstop_redis::RedisConfig::new(url).layout(layout),
                )
                .await?,
            );
            builder.idempotency_with(store, idempotency_config)
        }
        (ConfiguredStore::Postgres, Some(pool)) => {
            let store = PostgresStore::new(pool).layout(layout);
            store.migrate().await?;
            builder.idempotency_with(Arc::new(store), idempotency_config)
        }
        (ConfiguredStore::PostgresInbox, Some(pool)) => {
            // The store has a pool of its own: the `dead_lettered` mark after
            // a confirmed DLQ write never waits behind the inbox's open
            // transactions, which keeps the crash window between the two short.
            // Same database and schema as the inbox (the ledger's URL if given):
            // the inbox's fence check reads the store's table.
            let store_pool = PgConfig::new(pg_url(args, config))
                .application_name(application_name())
                .max_connections((settings.concurrency / 2).max(4))
                .pool()?;
            let store = PostgresStore::new(store_pool).layout(layout);
            store.migrate().await?;
            // The inbox commits only while the run holds its lease (same database).
            let inbox = Inbox::new(pool)
                .consumer(
                    store_config
                        .service
                        .clone()
                        .unwrap_or_else(|| source.group.clone()),
                )
                .layout(layout)
                .keyed_by(key.clone())
                .fenced_by(&store);
            let inbox = match &args.outbox {
                Some(_) => {
                    let table = Outbox::new(inbox.pool().clone());
                    table.migrate().await?;
                    let inbox = inbox.outbox(&table);
                    outbox = Some(table);
                    inbox
                }
                None => inbox,
            };
            inbox.migrate().await?;
            ledger = Ledger::Inbox;
            // The inbox makes the ledger write exactly-once; a dead letter is
            // an effect outside the database, so the idempotency store (same
            // database, keys in the consumer's keyspace like the inbox's; the
            // `<group>:` namespace of earlier releases is kept, so a
            // migration finds their keys) remembers
            // dead-lettered keys: a redelivery after a crash between the
            // confirmed DLQ write and the source ack is acked as a duplicate
            // instead of being dead-lettered twice.
            let idempotency_config = idempotency::Config {
                lease: lease(INBOX_STORE_LEASE),
                ..idempotency_config
            };
            builder
                .idempotency_with(
                    Arc::new(Namespaced::new(store, source.group.clone())),
                    idempotency_config,
                )
                .around_attempt(inbox.layer())
        }
        (_, None) => return Err("a PostgreSQL store needs a database".into()),
    };
    if args.events.is_some()
        && (!matches!(store_config.kind, ConfiguredStore::PostgresInbox) || args.at_least_once)
    {
        return Err(
            "--events needs a Kafka worker in exactly-once mode with --store postgres-inbox (events are committed with the offsets, recorded in the inbox row)"
                .into(),
        );
    }
    if args.outbox.is_some() && outbox.is_none() {
        return Err(
            "--outbox needs --store postgres-inbox (events are written in the inbox's transaction)"
                .into(),
        );
    }
    let handler = PlaceOrder {
        ledger,
        events: args.outbox.clone().or_else(|| args.events.clone()),
        fail_rate: args.fail_rate.clamp(0.0, 1.0),
        fail_later: args.fail_later,
        max_attempts: settings.max_attempts,
        work: Duration::from_millis(args.work_ms),
        abort_on: args.abort_on.clone(),
    };
    Ok((builder.build(handler), outbox))
}

/// The outbox relays of the process, stopped after the runners.
#[derive(Default)]
struct Relays(Vec<OutboxRelay>);

impl Relays {
    /// Starts a relay of `outbox` (if any) to `publisher`.
    fn start<P: backstop::publish::Publisher>(&mut self, outbox: Option<Outbox>, publisher: P) {
        if let Some(outbox) = outbox {
            let config = backstop_postgres::outbox::RelayConfig::default();
            self.0.push(outbox.relay(publisher, config));
        }
    }

    /// Stops every relay (before the broker connection they publish on is
    /// closed); a second call finds none.
    async fn stop(&mut self) {
        for relay in self.0.drain(..) {
            relay.stop().await;
        }
    }
}

fn sample_orders(n: usize) -> impl Iterator<Item = Message> {
    (0..n).map(|i| {
        let amount = if i % 100 == 99 {
            -1
        } else {
            (i % 500) as i64 + 1
        };
        Message::new(format!(r#"{{"order_id":"order-{i}","amount":{amount}}}"#))
            .with_message_id(format!("sample-{i}"))
            .with_key(format!("order-{i}"))
    })
}

/// What every runner of the process shares.
#[derive(Clone)]
struct RunnerSettings {
    breaker: Option<BreakerConfig>,
    shutdown_deadline: Duration,
    /// Cancelled when a runner fails: the others stop too, so the process
    /// exits for its supervisor (a source stopped by a fatal error, a fenced
    /// or stuck Kafka member, comes back only with a restart).
    stop_all: CancellationToken,
}

impl RunnerSettings {
    fn of(config: &WorkerConfig) -> Self {
        RunnerSettings {
            breaker: (config.breaker.trip_after > 0).then(|| {
                BreakerConfig::new(
                    config.breaker.trip_after,
                    Duration::from_millis(config.breaker.cool_down_ms),
                )
            }),
            shutdown_deadline: Duration::from_millis(config.shutdown.deadline_ms),
            stop_all: CancellationToken::new(),
        }
    }
}

/// Starts one source's runner; every runner stops on the same signal.
#[allow(clippy::too_many_arguments)]
fn spawn<S: Source + Send + 'static>(
    runners: &mut JoinSet<(String, Result<Summary, BoxError>)>,
    ops: Option<&Operations>,
    name: String,
    source: S,
    labels: MetricLabels,
    stack: Stack,
    concurrency: usize,
    settings: RunnerSettings,
) {
    let mut runner = Runner::new(source, stack)
        .concurrency(concurrency)
        .metric_labels(labels);
    if let Some(ops) = ops {
        ops.watch(name.clone(), runner.health());
    }
    if let Some(breaker) = settings.breaker {
        runner = runner.with_breaker(breaker);
    }
    let runner = runner
        .shutdown_deadline(settings.shutdown_deadline)
        .with_shutdown(settings.stop_all.child_token())
        .shutdown_on_signals();
    runners.spawn(async move { (name, runner.run().await.map_err(BoxError::from)) });
}

/// Waits for every runner; the first failure is the process's, and it
/// stops the other runners (`stop_all`).
async fn join(
    mut runners: JoinSet<(String, Result<Summary, BoxError>)>,
    stop_all: &CancellationToken,
) -> Result<Vec<(String, Summary)>, BoxError> {
    let mut summaries = Vec::new();
    let mut first_error = None;
    while let Some(done) = runners.join_next().await {
        match done {
            Ok((name, Ok(summary))) => summaries.push((name, summary)),
            Ok((name, Err(error))) => {
                tracing::error!(source = %name, error = %backstop::error::chain(&*error), "runner failed; stopping the other sources");
                stop_all.cancel();
                first_error.get_or_insert(error);
            }
            Err(join) => {
                stop_all.cancel();
                first_error.get_or_insert(join.into());
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(summaries),
    }
}

async fn main_inner(args: Args, config: WorkerConfig) -> Result<Vec<(String, Summary)>, BoxError> {
    // One operations server (/metrics, /healthz, /readyz) for every source
    // of the process; the recorder before any stack, so their handles record.
    let (ops, _server) = match config.telemetry.metrics_addr {
        Some(addr) => {
            let mut ops = Operations::with_prometheus()?;
            if let Some(secs) = config.telemetry.stuck_after_secs {
                ops = ops.stuck_after(Duration::from_secs(secs));
            }
            let server = ops.bind(addr).await?;
            (Some(ops), Some(server))
        }
        None => (None, None),
    };
    let ops = ops.as_ref();
    let sources = config.sources();
    let settings = RunnerSettings::of(&config);
    let mut runners = JoinSet::new();
    let mut relays = Relays::default();
    if args.events.is_some() && !matches!(config.broker.kind, BrokerKind::Kafka) {
        return Err("--events is for Kafka (exactly once); use --outbox elsewhere".into());
    }
    let result = match config.broker.kind {
        BrokerKind::Memory => {
            let broker = MemoryBroker::new();
            for source in &sources {
                for m in sample_orders(args.publish) {
                    broker.publish_now(&source.queue, m)?;
                }
                let consumer = broker.consume(&source.queue, source.settings.concurrency);
                let labels = consumer.metric_labels();
                let (stack, outbox) = stack(
                    &args,
                    &config,
                    source,
                    Arc::new(broker.dead_letter_sink()),
                    Some(Arc::new(broker.retry_sink())),
                    None,
                    labels.clone(),
                )
                .await?;
                relays.start(outbox, broker.clone());
                let name = source.name.clone();
                let concurrency = source.settings.concurrency;
                let consumer = if args.until_drained {
                    consumer.until_drained()
                } else {
                    consumer
                };
                spawn(
                    &mut runners,
                    ops,
                    name,
                    consumer,
                    labels,
                    stack,
                    concurrency,
                    settings.clone(),
                );
            }
            let summaries = join(runners, &settings.stop_all).await?;
            for source in &sources {
                tracing::info!(
                    source = %source.name,
                    dlq = broker.stats(&backstop::memory::dlq_name(&source.queue)).ready,
                    "dead letters"
                );
            }
            Ok(summaries)
        }
        BrokerKind::Rabbitmq => {
            let url = config.broker.amqp_url()?;
            let rabbit = RabbitMq::connect(url.expose()).await?;
            let secs = Duration::from_secs;
            for source in &sources {
                rabbit
                    .declare(
                        &Topology::quorum(source.queue.clone())
                            .max_attempts(source.settings.max_attempts)
                            .retry_tiers([secs(5), secs(30), secs(300)]),
                    )
                    .await?;
                let publisher = rabbit.publisher();
                for m in sample_orders(args.publish) {
                    backstop::publish::Publisher::publish(&publisher, &source.queue, &m).await?;
                }
                let consumer = rabbit
                    .source(&source.queue, source.settings.concurrency)
                    .await?
                    .consumer_timeout(Duration::from_millis(config.broker.consumer_timeout_ms));
                if let Some(events) = &args.outbox {
                    rabbit.declare(&Topology::quorum(events.clone())).await?;
                }
                let labels = consumer.metric_labels();
                let (stack, outbox) = stack(
                    &args,
                    &config,
                    source,
                    Arc::new(rabbit.dead_letter_sink()),
                    Some(Arc::new(rabbit.retry_sink())),
                    // Quorum queue: an outage goes to the delay queue, never a requeue.
                    Some(Arc::new(rabbit.retry_sink())),
                    labels.clone(),
                )
                .await?;
                relays.start(outbox, rabbit.publisher());
                spawn(
                    &mut runners,
                    ops,
                    source.name.clone(),
                    consumer,
                    labels,
                    stack,
                    source.settings.concurrency,
                    settings.clone(),
                );
            }
            let summaries = join(runners, &settings.stop_all).await;
            // The relay publishes on `rabbit`'s connection: stopped first.
            relays.stop().await;
            rabbit.close().await;
            summaries
        }
        BrokerKind::Kafka => {
            let brokers = config.broker.kafka_brokers();
            let mut options: Vec<KafkaOption> = config
                .broker
                .kafka_properties()
                .iter()
                .map(|(key, value)| KafkaOption::new(key, value.expose()))
                .collect();
            options.extend(args.kafka_options.iter().cloned());
            for source in &sources {
                let instance_id = config.broker.instance_id.clone();
                let mut kafka = Kafka::new(brokers.clone(), source.group.clone()).configure(|c| {
                    c.group_instance_id.clone_from(&instance_id);
                    c.apply_options(&options);
                });
                if !args.at_least_once {
                    let instance = instance_id.clone().unwrap_or_else(|| {
                        tracing::warn!(
                            "no --instance-id: this process's transactions get an id of their own, so what a crash leaves open is aborted only by the broker's transaction timeout (read_committed readers of its partitions wait until then)"
                        );
                        backstop::message::new_message_id()
                    });
                    kafka = kafka.exactly_once(&instance);
                    if !args.unordered_retries {
                        kafka = kafka.ordered_retries();
                    }
                }
                kafka.check(Duration::from_secs(30)).await?;
                kafka
                    .ensure_topics([TopicSpec::new(source.queue.clone()).partitions(4)])
                    .await?;
                if let Some(events) = args.outbox.as_ref().or(args.events.as_ref()) {
                    kafka
                        .ensure_topics([TopicSpec::new(events.clone()).partitions(4)])
                        .await?;
                }
                if args.publish > 0 {
                    let publisher = kafka.publisher()?;
                    for m in sample_orders(args.publish) {
                        backstop::publish::Publisher::publish(&publisher, &source.queue, &m)
                            .await?;
                    }
                }
                let consumer =
                    kafka.source(&[source.queue.as_str()], source.settings.concurrency)?;
                let labels = consumer.metric_labels();
                let (stack, outbox) = stack(
                    &args,
                    &config,
                    source,
                    Arc::new(kafka.dead_letter_sink()?),
                    Some(Arc::new(kafka.retry_sink()?)),
                    None,
                    labels.clone(),
                )
                .await?;
                if outbox.is_some() {
                    relays.start(outbox, kafka.publisher()?);
                }
                spawn(
                    &mut runners,
                    ops,
                    source.name.clone(),
                    consumer,
                    labels,
                    stack,
                    source.settings.concurrency,
                    settings.clone(),
                );
            }
            join(runners, &settings.stop_all).await
        }
    };
    relays.stop().await;
    result
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = args.config();
    let default_log = config
        .as_ref()
        .ok()
        .and_then(|c| c.telemetry.log.clone())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_log.into()),
        )
        .init();
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("order-worker: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::debug!(?config, "configuration");
    let _ = Order::default_source();
    match main_inner(args, config).await {
        Ok(summaries) => {
            let several = summaries.len() > 1;
            for (name, summary) in summaries {
                if !several {
                    println!("{summary}");
                } else {
                    println!("{name}: {summary}");
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("order-worker: {}", backstop::error::chain(&*error));
            std::process::ExitCode::FAILURE
        }
    }
}
