//! Per-consumer keyspaces and the safe upgrade, on real RabbitMQ queues with
//! a shared real Redis and a shared real PostgreSQL:
//!
//! 1. Two consumers (two queues) share one store and see the same message
//!    ids: each executes every message (the store's keyspace is global no
//!    more).
//! 2. A store filled by the first release's global layout is refused by a
//!    worker that did not choose, and upgraded by one that chose to
//!    migrate, while a worker of the global layout keeps consuming beside
//!    it: no key executes again, no letter is written twice, and the pair
//!    never runs one key at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::idempotency::Store;
use backstop::idempotency::{Config, KeyLayout, Layout, LayoutError};
use backstop::publish::Publisher;
use backstop::{
    Context, HandlerError, KeySource, Message, RetryPolicy, Runner, Stack, StackBuilder, Summary,
    handler_fn,
};
use backstop_postgres::{Inbox, InboxTx, PgConfig, PostgresError, PostgresStore};
use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_redis::{RedisConfig, RedisStore, RedisStoreError};
use backstop_tests::ledger::Ledger;
use backstop_tests::{poll, unique};

mod common;

/// A long window: the whole test runs inside it.
const WINDOW: Duration = Duration::from_secs(3600);

fn redis_url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Executions per message id, and how often two runs of one id overlapped.
#[derive(Clone, Default)]
struct Recorder {
    runs: Arc<Mutex<HashMap<String, u32>>>,
    running: Arc<Mutex<HashMap<String, u32>>>,
    overlaps: Arc<AtomicU32>,
}

impl Recorder {
    fn runs_of(&self, id: &str) -> u32 {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.runs.lock().unwrap().values().sum()
    }

    /// A stack: a body `poison` fails permanently; each run works `work`
    /// (written through the inbox transaction when `inbox` is given).
    fn stack(
        &self,
        rabbit: &RabbitMq,
        store: Arc<dyn Store>,
        inbox: Option<&Inbox>,
        work: Duration,
    ) -> Stack {
        let rec = self.clone();
        let with_inbox = inbox.is_some();
        let handler = handler_fn(move |body: String, ctx: Context| {
            let rec = rec.clone();
            async move {
                let id = ctx.meta().message_id.clone();
                {
                    let mut running = rec.running.lock().unwrap();
                    let n = running.entry(id.clone()).or_default();
                    if *n > 0 {
                        rec.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    *n += 1;
                }
                tokio::time::sleep(work).await;
                if with_inbox {
                    let tx = InboxTx::from_context(&ctx)?;
                    tx.execute("SELECT 1", &[]).await?;
                }
                *rec.running.lock().unwrap().entry(id.clone()).or_default() -= 1;
                if body == "poison" {
                    return Err(HandlerError::permanent("poison"));
                }
                *rec.runs.lock().unwrap().entry(id).or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        });
        let mut builder = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
            .retry(
                RetryPolicy::retries(1)
                    .backoff(Duration::from_millis(10), Duration::from_millis(20)),
            )
            .nack_delay(Duration::from_millis(30))
            .idempotency_with(
                store,
                Config {
                    lease: Duration::from_secs(5),
                    ..Config::keyed_by(KeySource::MessageId)
                },
            );
        if let Some(inbox) = inbox {
            builder = builder.around_attempt(inbox.layer());
        }
        builder.build(handler)
    }
}

async fn declare(rabbit: &RabbitMq, queue: &str) {
    rabbit
        .declare(&Topology::quorum(queue))
        .await
        .expect("declare the queue and its DLQ");
}

async fn publish(rabbit: &RabbitMq, queue: &str, ids: &[String], body: &str) {
    let publisher = rabbit.publisher();
    for id in ids {
        publisher
            .publish(
                queue,
                &Message::new(body.to_owned()).with_message_id(id.as_str()),
            )
            .await
            .expect("publish confirmed");
    }
}

/// Runs `stack` on `queue` until `done` holds, then shuts it down.
async fn consume_until(
    rabbit: &RabbitMq,
    queue: &str,
    stacks: Vec<Stack>,
    done: impl Fn() -> bool,
) -> Vec<Summary> {
    let mut runs = Vec::new();
    let mut tokens = Vec::new();
    for stack in stacks {
        let source = rabbit.source(queue, 8).await.expect("consume");
        let runner = Runner::new(source, stack).concurrency(8);
        tokens.push(runner.shutdown_token());
        runs.push(tokio::spawn(runner.run()));
    }
    let finished = poll(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let drained = rabbit.message_count(queue).await.ok() == Some(0);
            (drained && done()).then_some(())
        },
    )
    .await;
    // Let settlements of the last deliveries reach the broker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for token in tokens {
        token.cancel();
    }
    let mut summaries = Vec::new();
    for run in runs {
        summaries.push(run.await.expect("runner task").expect("runner"));
    }
    assert!(finished.is_some(), "not done in time: {summaries:?}");
    summaries
}

fn ids(run: &str, what: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{run}-{what}-{i}")).collect()
}

/// Hardening finding: two services sharing a store skipped each other's
/// messages. Billing and shipping consume the same order ids from their own
/// queues, through one Redis store (one prefix) or one PostgreSQL store and
/// inbox (one table each, one consumer name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_sharing_a_store_each_execute_every_message() {
    let run = unique("keyspaces");
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let ledger = Ledger::create(&run).await.expect("schema");
    let pool = PgConfig::new(ledger.url())
        .max_connections(8)
        .pool()
        .expect("pool");
    let pg = PostgresStore::new(pool.clone());
    pg.migrate().await.expect("migrate the store");
    let inbox = Inbox::new(pool).consumer("orders-app");
    inbox.migrate().await.expect("migrate the inbox");
    let redis = RedisStore::connect_with(RedisConfig::new(redis_url()).prefix(format!("{run}:")))
        .await
        .expect("redis");
    let orders = ids(&run, "o", 20);
    for (name, store, inbox) in [
        ("redis", Arc::new(redis) as Arc<dyn Store>, None),
        ("postgres", Arc::new(pg) as Arc<dyn Store>, Some(&inbox)),
    ] {
        let mut recorders = Vec::new();
        for service in ["billing", "shipping"] {
            let queue = format!("{run}-{name}-{service}").replace('_', "-");
            declare(&rabbit, &queue).await;
            publish(&rabbit, &queue, &orders, "order").await;
            let rec = Recorder::default();
            let stack = rec.stack(&rabbit, Arc::clone(&store), inbox, Duration::ZERO);
            let r = rec.clone();
            let summaries = consume_until(&rabbit, &queue, vec![stack], || r.total() >= 20).await;
            common::cleanup(&rabbit, &queue).await;
            assert_eq!(
                summaries[0].duplicates, 0,
                "{name} {service}: {:?}",
                summaries[0]
            );
            recorders.push((service, rec));
        }
        for (service, rec) in &recorders {
            for id in &orders {
                assert_eq!(rec.runs_of(id), 1, "{name}: {service} executes {id} once");
            }
        }
    }
    let _ = ledger.drop_schema().await;
    rabbit.close().await;
}

/// The first release's global layout, upgraded under load: see the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_global_layout_is_upgraded_without_running_a_key_twice() {
    let run = unique("upgrade");
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let ledger = Ledger::create(&run).await.expect("schema");
    let pool = PgConfig::new(ledger.url())
        .max_connections(16)
        .pool()
        .expect("pool");
    let prefix = format!("{run}:");
    let redis = |layout| {
        RedisStore::connect_with(
            RedisConfig::new(redis_url())
                .prefix(prefix.clone())
                .layout(layout),
        )
    };
    let postgres = |layout| PostgresStore::new(pool.clone()).layout(layout);
    let inbox = |layout| {
        Inbox::new(pool.clone())
            .consumer("orders-app")
            .layout(layout)
    };

    // Today's code: a worker of the global layout (keys as given, inbox
    // rows under the consumer name) fills both stores.
    let old_redis = redis(KeyLayout::Legacy).await.expect("legacy redis");
    let old_pg = postgres(KeyLayout::Legacy);
    old_pg.migrate().await.expect("legacy store");
    let old_inbox = inbox(KeyLayout::Legacy);
    old_inbox.migrate().await.expect("legacy inbox");
    let done = ids(&run, "done", 20);
    let poison = ids(&run, "poison", 3);
    let fresh = ids(&run, "new", 30);
    for (name, old_store, with_inbox) in [
        (
            "redis",
            Arc::new(old_redis.clone()) as Arc<dyn Store>,
            false,
        ),
        ("postgres", Arc::new(old_pg.clone()) as Arc<dyn Store>, true),
    ] {
        let queue = format!("{run}-{name}").replace('_', "-");
        declare(&rabbit, &queue).await;
        let dlq = Topology::quorum(queue.as_str()).dlq();
        let old = Recorder::default();
        let old_inbox = with_inbox.then_some(&old_inbox);
        publish(&rabbit, &queue, &done, "order").await;
        publish(&rabbit, &queue, &poison, "poison").await;
        let o = old.clone();
        consume_until(
            &rabbit,
            &queue,
            vec![old.stack(&rabbit, Arc::clone(&old_store), old_inbox, Duration::ZERO)],
            || o.total() >= 20,
        )
        .await;
        assert_eq!(
            rabbit.message_count(&dlq).await.ok(),
            Some(3),
            "{name}: the old letters"
        );
        let stored = done[0].as_str();
        match name {
            "redis" => assert_eq!(
                old_redis.redis_key(&backstop::idempotency::Key::new(stored)),
                format!("{prefix}{stored}")
            ),
            _ => assert_eq!(
                ledger
                    .count(&format!(
                        "backstop_idempotency WHERE key = '{stored}' AND state = 'completed'"
                    ))
                    .await
                    .ok(),
                Some(1),
                "the first release's key, as given"
            ),
        }

        // A worker that did not choose refuses the store.
        let refused = match name {
            "redis" => matches!(
                redis(KeyLayout::Keyspaced).await,
                Err(RedisStoreError::Layout(LayoutError::Unmarked { .. }))
            ),
            _ => {
                matches!(
                    postgres(KeyLayout::Keyspaced).migrate().await,
                    Err(PostgresError::Layout(LayoutError::Unmarked { .. }))
                ) && matches!(
                    inbox(KeyLayout::Keyspaced).migrate().await,
                    Err(PostgresError::Layout(LayoutError::Unmarked { .. }))
                )
            }
        };
        assert!(
            refused,
            "{name}: a store of the global layout is refused without a choice"
        );

        // The upgrade: a migrating worker beside a worker of today's code,
        // both consuming one queue; every old message is redelivered, every
        // new one arrives twice.
        let new_store: Arc<dyn Store> = match name {
            "redis" => Arc::new(
                redis(KeyLayout::Migrate { window: WINDOW })
                    .await
                    .expect("migrating redis"),
            ),
            _ => {
                let store = postgres(KeyLayout::Migrate { window: WINDOW });
                store.migrate().await.expect("migrating store");
                Arc::new(store)
            }
        };
        let new_inbox = inbox(KeyLayout::Migrate { window: WINDOW });
        if with_inbox {
            new_inbox.migrate().await.expect("migrating inbox");
        }
        let new_inbox = with_inbox.then_some(&new_inbox);
        assert!(
            matches!(new_store.layout().await, Ok(Layout::Migrating { .. })),
            "{name}: the marker records the migration"
        );
        let joined = match name {
            "redis" => redis(KeyLayout::Keyspaced)
                .await
                .expect("a later worker")
                .key_layout()
                .await
                .ok(),
            _ => {
                let store = postgres(KeyLayout::Keyspaced);
                store.migrate().await.expect("a later worker");
                store.key_layout().await.ok()
            }
        };
        assert!(
            matches!(joined, Some(Layout::Migrating { .. })),
            "{name}: a worker started later with the default choice joins the migration"
        );
        publish(&rabbit, &queue, &done, "order").await;
        publish(&rabbit, &queue, &poison, "poison").await;
        // Both copies of a new message side by side: the two workers get
        // one each at the same time.
        let twice: Vec<String> = fresh
            .iter()
            .flat_map(|id| [id.clone(), id.clone()])
            .collect();
        publish(&rabbit, &queue, &twice, "order").await;
        let new = Recorder::default();
        let mixed = Recorder {
            runs: Arc::clone(&new.runs),
            running: Arc::clone(&new.running),
            overlaps: Arc::clone(&new.overlaps),
        };
        let work = Duration::from_millis(100);
        let n = new.clone();
        let summaries = consume_until(
            &rabbit,
            &queue,
            vec![
                new.stack(&rabbit, new_store, new_inbox, work),
                mixed.stack(&rabbit, Arc::clone(&old_store), old_inbox, work),
            ],
            || n.total() >= 30,
        )
        .await;
        let letters = rabbit.message_count(&dlq).await.ok();
        common::cleanup(&rabbit, &queue).await;

        for id in &done {
            assert_eq!(
                new.runs_of(id),
                0,
                "{name}: {id}, done before the upgrade, does not execute again"
            );
        }
        for id in &fresh {
            assert_eq!(
                new.runs_of(id),
                1,
                "{name}: {id} executes exactly once across the pair"
            );
        }
        assert_eq!(
            letters,
            Some(3),
            "{name}: no letter written twice: {summaries:?}"
        );
        assert_eq!(
            new.overlaps.load(Ordering::SeqCst),
            0,
            "{name}: the pair never ran one key at once"
        );
    }
    let _ = ledger.drop_schema().await;
    rabbit.close().await;
}
