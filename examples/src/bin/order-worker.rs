//! The order worker: one binary for every broker.
//!
//! ```text
//! cargo run --release -p backstop-examples --bin order-worker -- \
//!     --broker rabbitmq --source orders --concurrency 32
//! cargo run --release -p backstop-examples --bin order-worker -- \
//!     --broker kafka --url 127.0.0.1:9092 --source orders --group order-worker
//! cargo run --release -p backstop-examples --bin order-worker -- --broker memory --publish 1000
//! ```
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
//! message twice. Idempotency keys (and inbox rows) live in the
//! consumer's keyspace: the queue, or the topic and group, with `--service`
//! added. `--key-layout` says what to do with a shared store an earlier
//! release filled with global keys: refuse it (the default), keep that
//! layout (`legacy`), or `migrate` (both layouts are read for
//! `--migrate-window-secs`). SIGINT/SIGTERM stop it gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backstop::breaker::BreakerConfig;
use backstop::idempotency::{self, KeyLayout, Namespaced};
use backstop::memory::MemoryBroker;
use backstop::{
    BoxError, Context, DeadLetterSink, Handle, KeySource, MemoryStore, Message, Payload,
    RetryPolicy, RetrySink, Runner, Source, Stack, StackBuilder, Store, Summary,
};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_postgres::{Inbox, InboxTx, PgConfig, PostgresStore};
use backstop_rabbitmq::{RabbitMq, Topology};
use clap::{Parser, ValueEnum};
use rand::Rng;

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

/// Consumes orders through the full backstop stack. No `Debug`: `--url` and
/// `--ledger` may hold passwords (prefer the environment variables).
#[derive(Parser)]
#[command(name = "order-worker", version)]
struct Args {
    /// Which broker to consume from.
    #[arg(long, value_enum, default_value = "memory")]
    broker: Broker,
    /// AMQP URL (RabbitMQ) or bootstrap servers (Kafka); default from
    /// BACKSTOP_AMQP_URL or BACKSTOP_KAFKA_BROKERS, so no password need be on
    /// argv. Repeatable (or comma-separated) for the nodes of a cluster: a
    /// RabbitMQ worker fails over to the next node when its node is lost.
    #[arg(long)]
    url: Vec<String>,
    /// Kafka: static group membership (`group.instance.id`), unique per
    /// worker process. A worker restarted with the same id within the
    /// session timeout gets its partitions back without a rebalance.
    #[arg(long)]
    instance_id: Option<String>,
    /// The queue or topic to consume.
    #[arg(long, default_value = "orders")]
    source: String,
    /// Kafka consumer group.
    #[arg(long, default_value = "order-worker")]
    group: String,
    /// Kafka: a librdkafka property, KEY=VALUE (repeatable), e.g.
    /// security.protocol=SASL_SSL; a secret may be KEY=@/path/to/file.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<backstop_kafka::KafkaOption>,
    /// Where idempotency keys live (Redis from BACKSTOP_REDIS_URL, PostgreSQL from --ledger or BACKSTOP_PG_URL).
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    /// PostgreSQL URL of the execution ledger (and of the postgres stores;
    /// those default to BACKSTOP_PG_URL).
    #[arg(long)]
    ledger: Option<String>,
    /// Messages in flight at once (and the RabbitMQ prefetch).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Attempts per message before it is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Larger bodies are dead-lettered with kind `too_large`.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_payload_bytes: usize,
    /// Share of runs that fail transiently before doing anything (never the last attempt).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Publish this many sample orders to the source first.
    #[arg(long, default_value_t = 0)]
    publish: usize,
    /// Stop once the source is drained (memory broker only).
    #[arg(long)]
    until_drained: bool,
    /// Lease of the idempotency store in milliseconds (default: 10 s with
    /// `postgres-inbox`, 30 s otherwise); renewed every third of it.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Each run works this long (milliseconds) before its effect, stopping
    /// early on shutdown or a lost lease.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// A service name added to the idempotency keyspace (never in place of
    /// the queue, topic or group) and the inbox's consumer name (default: the group).
    #[arg(long)]
    service: Option<String>,
    /// What to do with a shared store that holds global keys of an earlier
    /// release: refuse to start (keyspaced), keep them (legacy), or migrate.
    #[arg(long, value_enum, default_value = "keyspaced")]
    key_layout: Layout,
    /// With `--key-layout migrate`: how long both layouts are read, from
    /// the first migrating start (longer than the rolling deploy and the
    /// store's 24 h TTL).
    #[arg(long, default_value_t = 48 * 3600)]
    migrate_window_secs: u64,
    /// The kill switch: stop consuming after this many outage signals in a
    /// row (store down, ledger or inbox unavailable; transient handler
    /// failures never count, so `--fail-rate` never trips it); 0 turns it off.
    #[arg(long, default_value_t = 5)]
    breaker_trip_after: u32,
    /// How long the kill switch stays open before probing, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    breaker_cool_down_ms: u64,
    /// RabbitMQ: the broker's `consumer_timeout` in milliseconds (a 3.x
    /// client cannot read it); a delivery is postponed through its delay
    /// queue before it runs out.
    #[arg(long, default_value_t = 30 * 60 * 1000)]
    consumer_timeout_ms: u64,
    /// Fault injection: a run of this order id aborts the process
    /// (`std::process::abort`, no unwinding, nothing released).
    #[arg(long)]
    abort_on: Option<String>,
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
    fail_rate: f64,
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
            return Err(OrderError::Injected);
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
        Ok(())
    }
}

/// The key layout chosen on the command line.
fn key_layout(args: &Args) -> KeyLayout {
    match args.key_layout {
        Layout::Keyspaced => KeyLayout::Keyspaced,
        Layout::Legacy => KeyLayout::Legacy,
        Layout::Migrate => KeyLayout::Migrate {
            window: Duration::from_secs(args.migrate_window_secs),
        },
    }
}

fn pg_url(args: &Args) -> String {
    args.ledger
        .clone()
        .or_else(|| std::env::var("BACKSTOP_PG_URL").ok())
        .unwrap_or_else(|| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned())
}

/// The stack for these arguments, with the broker's sinks.
async fn stack(
    args: &Args,
    dead_letter: Arc<dyn DeadLetterSink>,
    retry: Option<Arc<dyn RetrySink>>,
    postpone: Option<Arc<dyn RetrySink>>,
) -> Result<Stack, BoxError> {
    let mut ledger = Ledger::None;
    let mut builder = StackBuilder::<Order>::new(dead_letter)
        .retry(RetryPolicy {
            max_attempts: args.max_attempts.max(1),
            ..RetryPolicy::default().backoff(Duration::from_millis(50), Duration::from_secs(5))
        })
        .max_payload(args.max_payload_bytes)
        .timeout(Duration::from_secs(30));
    if let Some(retry) = retry {
        builder = builder.retry_sink(retry);
    }
    if let Some(postpone) = postpone {
        builder = builder.postpone_through(postpone);
    }
    let pool = match (&args.ledger, args.store) {
        (Some(_), _) | (None, StoreKind::Postgres | StoreKind::PostgresInbox) => {
            // Every in-flight message may hold one connection (the inbox's
            // transaction, or a ledger insert).
            let pool = PgConfig::new(pg_url(args))
                .max_connections(args.concurrency + 2)
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
    let lease = |default| args.lease_ms.map_or(default, Duration::from_millis);
    let config = idempotency::Config {
        lease: lease(idempotency::Config::default().lease),
        service: args.service.clone(),
        ..idempotency::Config::keyed_by(key.clone())
    };
    let layout = key_layout(args);
    builder = match (args.store, pool) {
        (StoreKind::Memory, _) => {
            builder.idempotency_with(Arc::new(MemoryStore::default()), config)
        }
        (StoreKind::Redis, _) => {
            let url = std::env::var("BACKSTOP_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let store: Arc<dyn Store> = Arc::new(
                backstop_redis::RedisStore::connect_with(
                    backstop_redis::RedisConfig::new(url).layout(layout),
                )
                .await?,
            );
            builder.idempotency_with(store, config)
        }
        (StoreKind::Postgres, Some(pool)) => {
            let store = PostgresStore::new(pool).layout(layout);
            store.migrate().await?;
            builder.idempotency_with(Arc::new(store), config)
        }
        (StoreKind::PostgresInbox, Some(pool)) => {
            // The store has a pool of its own: the `dead_lettered` mark after
            // a confirmed DLQ write never waits behind the inbox's open
            // transactions, which keeps the crash window between the two short.
            let store_pool = PgConfig::new(pg_url(args))
                .max_connections((args.concurrency / 2).max(4))
                .pool()?;
            let store = PostgresStore::new(store_pool).layout(layout);
            store.migrate().await?;
            // The inbox commits only while the run holds its lease (same database).
            let inbox = Inbox::new(pool)
                .consumer(args.service.clone().unwrap_or_else(|| args.group.clone()))
                .layout(layout)
                .keyed_by(key.clone())
                .fenced_by(&store);
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
            let config = idempotency::Config {
                lease: lease(INBOX_STORE_LEASE),
                ..config
            };
            builder
                .idempotency_with(Arc::new(Namespaced::new(store, args.group.clone())), config)
                .innermost(inbox.layer())
        }
        (_, None) => return Err("a PostgreSQL store needs a database".into()),
    };
    let handler = PlaceOrder {
        ledger,
        fail_rate: args.fail_rate.clamp(0.0, 1.0),
        max_attempts: args.max_attempts.max(1),
        work: Duration::from_millis(args.work_ms),
        abort_on: args.abort_on.clone(),
    };
    Ok(builder.build(handler))
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

async fn run<S: Source>(source: S, stack: Stack, args: &Args) -> Result<Summary, BoxError> {
    let mut runner = Runner::new(source, stack).concurrency(args.concurrency);
    if args.breaker_trip_after > 0 {
        runner = runner.with_breaker(BreakerConfig::new(
            args.breaker_trip_after,
            Duration::from_millis(args.breaker_cool_down_ms),
        ));
    }
    Ok(runner
        .shutdown_deadline(Duration::from_secs(20))
        .shutdown_on_signals()
        .run()
        .await?)
}

async fn main_inner(args: Args) -> Result<Summary, BoxError> {
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()?;
        backstop::metrics::describe();
    }
    match args.broker {
        Broker::Memory => {
            let broker = MemoryBroker::new();
            for m in sample_orders(args.publish) {
                broker.publish_now(&args.source, m)?;
            }
            let stack = stack(
                &args,
                Arc::new(broker.dead_letter_sink()),
                Some(Arc::new(broker.retry_sink())),
                None,
            )
            .await?;
            let source = broker.consume(&args.source, args.concurrency);
            let summary = if args.until_drained {
                run(source.until_drained(), stack, &args).await?
            } else {
                run(source, stack, &args).await?
            };
            tracing::info!(
                dlq = broker
                    .stats(&backstop::memory::dlq_name(&args.source))
                    .ready,
                "dead letters"
            );
            Ok(summary)
        }
        Broker::Rabbitmq => {
            let url = joined_urls(&args.url).unwrap_or_else(backstop_rabbitmq::url_from_env);
            let rabbit = RabbitMq::connect(url).await?;
            let secs = Duration::from_secs;
            rabbit
                .declare(
                    &Topology::quorum(args.source.clone())
                        .max_attempts(args.max_attempts)
                        .retry_tiers([secs(5), secs(30), secs(300)]),
                )
                .await?;
            let publisher = rabbit.publisher();
            for m in sample_orders(args.publish) {
                backstop::Publisher::publish(&publisher, &args.source, &m).await?;
            }
            let stack = stack(
                &args,
                Arc::new(rabbit.dead_letter_sink()),
                Some(Arc::new(rabbit.retry_sink())),
                // Quorum queue: an outage goes to the delay queue, never a requeue.
                Some(Arc::new(rabbit.retry_sink())),
            )
            .await?;
            let source = rabbit
                .source(&args.source, args.concurrency)
                .await?
                .consumer_timeout(Duration::from_millis(args.consumer_timeout_ms));
            let summary = run(source, stack, &args).await?;
            rabbit.close().await;
            Ok(summary)
        }
        Broker::Kafka => {
            let brokers = joined_urls(&args.url).unwrap_or_else(backstop_kafka::brokers_from_env);
            let instance_id = args.instance_id.clone();
            let kafka = Kafka::new(brokers, args.group.clone()).configure(|c| {
                c.group_instance_id = instance_id;
                c.apply_options(&args.kafka_options);
            });
            kafka.check(Duration::from_secs(30)).await?;
            kafka
                .ensure_topics([TopicSpec::new(args.source.clone()).partitions(4)])
                .await?;
            if args.publish > 0 {
                let publisher = kafka.publisher()?;
                for m in sample_orders(args.publish) {
                    backstop::Publisher::publish(&publisher, &args.source, &m).await?;
                }
            }
            let stack = stack(
                &args,
                Arc::new(kafka.dead_letter_sink()?),
                Some(Arc::new(kafka.retry_sink()?)),
                None,
            )
            .await?;
            run(
                kafka.source(&[args.source.as_str()], args.concurrency)?,
                stack,
                &args,
            )
            .await
        }
    }
}

/// The `--url` values as one comma-separated list (none given: `None`).
fn joined_urls(urls: &[String]) -> Option<String> {
    (!urls.is_empty()).then(|| urls.join(","))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let _ = Order::default_source();
    match main_inner(args).await {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("order-worker: {}", backstop::error::chain(&*error));
            std::process::ExitCode::FAILURE
        }
    }
}
