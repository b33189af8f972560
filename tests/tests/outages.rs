//! Dependency outages and the kill switch, against real brokers and stores.
//!
//! RabbitMQ, Redis and PostgreSQL are private instances
//! (`scripts/services/outages.sh`): a node whose `consumer_timeout` is 4 s,
//! checked every second (`channel_tick_interval`), so a few seconds prove
//! what the default 30 minutes would need; a Redis and a PostgreSQL that
//! these tests stop and start. Kafka is the shared broker, with topics and
//! groups of their own. Queues are quorum queues with `x-delivery-limit` 5
//! and a 1 s delay tier (20 s in the breaker test); the nack delay is
//! 200 ms, so an outage of 5 s is far longer than the limit × the nack
//! delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::breaker::{BreakerConfig, BreakerState};
use backstop::error::BoxError;
use backstop::publish::Publisher;
use backstop::runner::Readiness;
use backstop::{
    Context, HandlerError, KeySource, Message, RetryPolicy, Runner, StackBuilder, Summary,
    handler_fn,
};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::lapin::{self, ConnectionProperties};
use backstop_rabbitmq::{RabbitMq, Topology};
use backstop_tests::{poll, run_command, unique};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5684/%2f";
const REDIS: &str = "redis://127.0.0.1:6394";
const PG: &str = "postgres://backstop:backstop@127.0.0.1:5444/backstop";
/// The private node's `consumer_timeout`.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(4);
const NACK_DELAY: Duration = Duration::from_millis(200);
const DELIVERY_LIMIT: u32 = 5;
/// Longer than `DELIVERY_LIMIT` × `NACK_DELAY`, and than the consumer timeout.
const OUTAGE: Duration = Duration::from_secs(5);
/// The breaker test's delay tier: longer than its checks take.
const BREAKER_TIER: Duration = Duration::from_secs(20);

/// Starts the private instances once per run.
async fn services() {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    STARTED
        .get_or_init(|| async {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
            if let Err(error) = run_command("bash", &[&script(), "start"]).await {
                panic!("starting the outage services failed: {error}");
            }
        })
        .await;
}

fn script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/services/outages.sh"
    )
    .to_owned()
}

/// Tests that stop a store run one at a time.
static OUTAGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn outage(what: &str) {
    run_command("bash", &[&script(), &format!("{what}-stop")])
        .await
        .unwrap_or_else(|e| panic!("stopping {what}: {e}"));
}

async fn recover(what: &str) {
    run_command("bash", &[&script(), &format!("{what}-start")])
        .await
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
}

/// Declares `queue` (quorum, delivery limit 5, one delay tier of `tier`).
async fn declare(rabbit: &RabbitMq, queue: &str, tier: Duration) {
    rabbit
        .declare(
            &Topology::quorum(queue)
                .max_attempts(3)
                .delivery_limit(DELIVERY_LIMIT)
                .retry_tiers([tier]),
        )
        .await
        .expect("declare");
}

async fn publish(rabbit: &RabbitMq, queue: &str, ids: impl IntoIterator<Item = String>) {
    let publisher = rabbit.publisher();
    for id in ids {
        let body = serde_json::json!({ "id": id }).to_string();
        publisher
            .publish(queue, &Message::new(body).with_message_id(id.clone()))
            .await
            .expect("publish");
    }
}

/// Messages in `queue` (ready), by a passive declare.
async fn depth(queue: &str) -> u32 {
    let connection = lapin::Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = connection.close(200, "OK".into()).await;
    q.message_count()
}

/// One run of the handler.
#[derive(Clone, Debug)]
struct Run {
    id: String,
    attempt: u32,
    redelivered: bool,
    delivery_count: Option<String>,
}

type Runs = Arc<Mutex<Vec<Run>>>;

fn note(runs: &Runs, ctx: &Context) {
    runs.lock().unwrap().push(Run {
        id: ctx.message_id().to_owned(),
        attempt: ctx.attempt(),
        redelivered: ctx.meta().redelivered,
        delivery_count: ctx
            .headers()
            .get_value("x-delivery-count")
            .map(ToString::to_string),
    });
}

/// Samples the breaker's state and the readiness every 20 ms until `stop`.
fn sample(
    breaker: backstop::breaker::Breaker,
    readiness: Readiness,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(BreakerState, bool)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.is_cancelled() {
            seen.push((breaker.state(), readiness.is_ready()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

/// What every outage test asserts once the store is back.
fn assert_processed_once_without_spending(runs: &[Run], ids: &[String], summary: &Summary) {
    let mut by_id: HashMap<&str, Vec<&Run>> = HashMap::new();
    for run in runs {
        by_id.entry(run.id.as_str()).or_default().push(run);
    }
    for id in ids {
        let runs = by_id.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(runs.len(), 1, "{id} ran {} times: {runs:?}", runs.len());
        let run = runs[0];
        assert_eq!(run.attempt, 1, "an outage never counts an attempt: {run:?}");
        assert_eq!(
            run.delivery_count, None,
            "no delivery count spent (no requeue, no channel closed): {run:?}"
        );
        assert!(!run.redelivered, "never requeued: {run:?}");
    }
    assert_eq!(summary.ack_failed, 0, "{summary}");
    assert_eq!(summary.dead_lettered, 0, "{summary}");
}

fn assert_opened_and_closed(seen: &[(BreakerState, bool)], trips: u64) {
    assert!(trips >= 1, "the breaker tripped");
    assert!(
        seen.iter()
            .any(|(state, ready)| *state == BreakerState::Open && !ready),
        "not ready while open"
    );
    assert_eq!(
        seen.last().map(|s| s.0),
        Some(BreakerState::Closed),
        "closed again"
    );
}

/// The rest of a RabbitMQ outage test: `stack` over `queue`, `ids` published
/// before `what` stops, its outage, and the assertions.
async fn rabbit_outage(what: &str, queue: &str, stack: backstop::Stack, runs: Runs) {
    let rabbit = RabbitMq::connect(AMQP).await.expect("connect");
    // Before the outage: one message proves the stack works.
    let warm = vec![format!("{queue}-warm")];
    publish(&rabbit, queue, warm.clone()).await;
    let source = rabbit
        .source(queue, 4)
        .await
        .expect("source")
        .consumer_timeout(CONSUMER_TIMEOUT)
        .timeout_margin(Duration::from_millis(1500));
    let runner = Runner::new(source, stack)
        .concurrency(4)
        .with_breaker(BreakerConfig::new(3, Duration::from_millis(700)));
    let (breaker, readiness, token) = (
        runner.breaker(),
        runner.readiness(),
        runner.shutdown_token(),
    );
    let run = tokio::spawn(runner.run());
    let done = |n: usize| {
        let runs = Arc::clone(&runs);
        move || {
            let n_runs = runs.lock().unwrap().len();
            async move { (n_runs >= n).then_some(()) }
        }
    };
    poll(Duration::from_secs(20), Duration::from_millis(50), done(1))
        .await
        .expect("the warm-up message ran");

    let stop = CancellationToken::new();
    let sampler = sample(breaker.clone(), readiness.clone(), stop.clone());
    outage(what).await;
    let ids: Vec<String> = (0..12).map(|i| format!("{queue}-{i}")).collect();
    publish(&rabbit, queue, ids.clone()).await;
    tokio::time::sleep(OUTAGE).await;
    let open_during_outage = breaker.state();
    recover(what).await;
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        done(13),
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "every message ran after {what} returned: {:?}",
            runs.lock().unwrap()
        )
    });
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let state = breaker.state();
        async move { (state == BreakerState::Closed).then_some(()) }
    })
    .await
    .expect("the breaker closed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    token.cancel();
    let summary = run.await.expect("join").expect("run");
    let seen = sampler.await.expect("sampler");
    rabbit.close().await;

    assert_eq!(
        depth(&format!("{queue}.dlq")).await,
        0,
        "nothing dead-lettered: {summary}"
    );
    assert_eq!(depth(queue).await, 0, "nothing left: {summary}");
    eprintln!("{what} outage: {summary}");
    let runs = runs.lock().unwrap().clone();
    let all: Vec<String> = warm.into_iter().chain(ids).collect();
    assert_processed_once_without_spending(&runs, &all, &summary);
    assert_ne!(
        open_during_outage,
        BreakerState::Closed,
        "stopped consuming during the outage"
    );
    assert_opened_and_closed(&seen, breaker.trips());
    assert!(
        summary.postponed > 0,
        "outages postponed through the delay queue: {summary}"
    );
    assert_eq!(summary.nacked, 0, "never a requeueing nack: {summary}");
}

/// A Redis store on the private Redis under a prefix of its own: the private
/// instance outlives a run, and keys of an earlier run are not this test's.
async fn redis_store(name: &str) -> backstop_redis::RedisStore {
    backstop_redis::RedisStore::connect_with(
        backstop_redis::RedisConfig::new(REDIS).prefix(format!("backstop-outages:{name}:")),
    )
    .await
    .expect("redis")
}

/// Starts the services, connects to the private node and declares a fresh
/// queue with its DLQ and delay queue.
async fn fresh_queue(prefix: &str) -> (String, RabbitMq) {
    fresh_queue_with_tier(prefix, Duration::from_secs(1)).await
}

/// A fresh queue whose only delay tier is `tier`.
async fn fresh_queue_with_tier(prefix: &str, tier: Duration) -> (String, RabbitMq) {
    services().await;
    let queue = unique(prefix);
    let rabbit = RabbitMq::connect(AMQP).await.expect("connect");
    declare(&rabbit, &queue, tier).await;
    (queue, rabbit)
}

/// A plain lapin consumer of `queue` (manual ack, `prefetch`), on a
/// connection of its own.
async fn raw_consumer(
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> (lapin::Connection, lapin::Channel, lapin::Consumer) {
    let connection = lapin::Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (connection, channel, consumer)
}

/// The RabbitMQ stack every test uses: DLQ and delay-queue sinks, outages
/// postponed through the delay queue, a short nack delay.
fn rabbit_stack(rabbit: &RabbitMq) -> StackBuilder<Value> {
    StackBuilder::<Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(RetryPolicy::retries(2))
        .retry_sink(Arc::new(rabbit.retry_sink()))
        .postpone_through(Arc::new(rabbit.retry_sink()))
        .nack_delay(NACK_DELAY)
}

/// A handler that notes every run and succeeds.
fn noting(runs: &Runs) -> impl backstop::Handle<Value> + use<> {
    let runs = Arc::clone(runs);
    handler_fn(move |_v: Value, ctx: Context| {
        let runs = Arc::clone(&runs);
        async move {
            note(&runs, &ctx);
            Ok::<_, HandlerError>(())
        }
    })
}

/// The control: on this node a delivery held past the consumer timeout
/// really gets its channel closed, and comes back with a delivery count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_delivery_held_past_the_consumer_timeout_closes_its_channel() {
    let (queue, rabbit) = fresh_queue("outages_control").await;
    publish(&rabbit, &queue, [format!("{queue}-1")]).await;
    let (connection, channel, mut consumer) = raw_consumer(&queue, 1, "control").await;
    let held = consumer.next().await.expect("a delivery").expect("ok");
    let closed = poll(CONSUMER_TIMEOUT * 3, Duration::from_millis(100), || {
        let connected = channel.status().connected();
        async move { (!connected).then_some(()) }
    })
    .await;
    assert!(
        closed.is_some(),
        "the broker closed the channel of a delivery held past its consumer timeout"
    );
    assert!(
        !matches!(held.acker.ack(BasicAckOptions::default()).await, Ok(true)),
        "the late ack is refused"
    );
    let again = connection.create_channel().await.expect("channel");
    let mut consumer = again
        .basic_consume(
            queue.as_str().into(),
            "control-2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let back = consumer.next().await.expect("redelivered").expect("ok");
    assert!(back.redelivered);
    let count = back
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert!(count.is_some(), "the return spent a delivery count");
    back.acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let _ = connection.close(200, "OK".into()).await;
    rabbit.close().await;
}

/// Redis stopped for 5 s (> limit × nack delay, > the consumer timeout)
/// under a quorum queue with an idempotency store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_spends_no_delivery_count_and_dead_letters_nothing() {
    services().await;
    let _one = OUTAGES.lock().await;
    recover("redis").await;
    let (queue, rabbit) = fresh_queue("outages_redis").await;
    let store = redis_store(&unique("outages")).await;
    let runs: Runs = Arc::default();
    let stack = rabbit_stack(&rabbit)
        .idempotency(
            Arc::new(backstop::idempotency::Namespaced::new(store, queue.clone())),
            KeySource::MessageId,
        )
        .build(noting(&runs));
    rabbit_outage("redis", &queue, stack, runs).await;
    rabbit.close().await;
}

/// PostgreSQL stopped for 5 s under the inbox and a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_under_the_inbox_spends_no_delivery_count_and_dead_letters_nothing() {
    services().await;
    let _one = OUTAGES.lock().await;
    recover("postgres").await;
    let (queue, rabbit) = fresh_queue("outages_pg").await;
    let config = backstop_postgres::PgConfig::new(PG)
        .max_connections(6)
        .connect_timeout(Duration::from_secs(1))
        .wait_timeout(Duration::from_secs(1));
    // Tables of this run: the private database outlives a run, and keys of
    // an earlier one (or of an earlier release) are not this test's business.
    let store = backstop_postgres::PostgresStore::new(config.pool().expect("pool"))
        .with_table(&format!("{queue}_idempotency"))
        .expect("table name");
    store.migrate().await.expect("migrate store");
    let inbox = backstop_postgres::Inbox::new(config.pool().expect("pool"))
        .with_table(&format!("{queue}_inbox"))
        .expect("table name")
        .consumer(queue.clone())
        .keyed_by(KeySource::MessageId)
        .fenced_by(&store);
    inbox.migrate().await.expect("migrate inbox");
    let runs: Runs = Arc::default();
    let noted = Arc::clone(&runs);
    let stack = rabbit_stack(&rabbit)
        .idempotency(
            Arc::new(backstop::idempotency::Namespaced::new(store, queue.clone())),
            KeySource::MessageId,
        )
        .around_attempt(inbox.layer())
        .build(handler_fn(move |_v: Value, ctx: Context| {
            let runs = Arc::clone(&noted);
            async move {
                let tx = backstop_postgres::InboxTx::from_context(&ctx)
                    .map_err(HandlerError::permanent)?;
                tx.execute("select 1", &[])
                    .await
                    .map_err(|e| HandlerError::unavailable(BoxError::from(e)))?;
                note(&runs, &ctx);
                Ok::<_, HandlerError>(())
            }
        }));
    rabbit_outage("postgres", &queue, stack, runs).await;
    rabbit.close().await;
}

/// A retry that would sleep past the consumer timeout in process goes
/// through the delay queue in time; the broker never closes the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sleep_that_would_outlive_the_consumer_timeout_is_postponed_in_time() {
    let (queue, rabbit) = fresh_queue("outages_sleep").await;
    let runs: Runs = Arc::default();
    let noted = Arc::clone(&runs);
    let policy = RetryPolicy {
        // Without the budget, a 6 s retry_after would be slept in process.
        in_process_limit: Duration::from_secs(60),
        ..RetryPolicy::retries(2)
    };
    let stack =
        rabbit_stack(&rabbit)
            .retry(policy)
            .build(handler_fn(move |_v: Value, ctx: Context| {
                let runs = Arc::clone(&noted);
                async move {
                    note(&runs, &ctx);
                    if ctx.attempt() == 1 {
                        return Err(
                            HandlerError::transient("not yet").retry_after(Duration::from_secs(6))
                        );
                    }
                    Ok(())
                }
            }));
    let ids = vec![format!("{queue}-1")];
    publish(&rabbit, &queue, ids.clone()).await;
    let source = rabbit
        .source(&queue, 1)
        .await
        .expect("source")
        .consumer_timeout(CONSUMER_TIMEOUT)
        .timeout_margin(Duration::from_millis(1500));
    let runner = Runner::new(source, stack);
    let (readiness, token) = (runner.readiness(), runner.shutdown_token());
    let run = tokio::spawn(runner.run());
    let ready_always = {
        let token = token.clone();
        tokio::spawn(async move {
            let mut lost = false;
            tokio::time::sleep(Duration::from_millis(500)).await;
            while !token.is_cancelled() {
                lost |= readiness.get().is_err_and(|why| why.contains("lost"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lost
        })
    };
    let twice = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let n = runs.lock().unwrap().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    // Past another consumer timeout: a channel closed by the broker would show.
    tokio::time::sleep(CONSUMER_TIMEOUT + Duration::from_secs(1)).await;
    token.cancel();
    let summary = run.await.expect("join").expect("run");
    let lost_connection = ready_always.await.expect("join");
    rabbit.close().await;
    let runs = runs.lock().unwrap().clone();
    assert!(twice.is_some(), "the retry ran: {runs:?} {summary}");
    assert_eq!(runs.len(), 2, "one failed run, one good run: {runs:?}");
    assert_eq!((runs[0].attempt, runs[1].attempt), (1, 2), "{runs:?}");
    assert!(
        !runs[1].redelivered && runs[1].delivery_count.is_none(),
        "the retry came through the delay queue, not a redelivery after the broker closed the channel: {runs:?}"
    );
    assert_eq!(summary.deferred, 1, "{summary}");
    assert_eq!(
        summary.ack_failed, 0,
        "no ack on a closed channel: {summary}"
    );
    assert!(!lost_connection, "the consumer's channel was never closed");
    assert_eq!(depth(&format!("{queue}.dlq")).await, 0);
}

/// The breaker trips after exactly the configured outage signals and
/// recovers; nothing is lost or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_trips_after_exactly_the_configured_outages_and_recovers() {
    // A 20 s delay tier: no postponed copy comes back (as a further outage,
    // or as a half-open probe that fails and trips it again) before the
    // checks below, which come within 20 s of the first postponement (two
    // 5 s polls and a 10 s one; each takes far less unless it fails).
    let (queue, rabbit) = fresh_queue_with_tier("outages_breaker", BREAKER_TIER).await;
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let runs: Runs = Arc::default();
    let (noted, is_down, called) = (Arc::clone(&runs), Arc::clone(&down), Arc::clone(&calls));
    let stack = rabbit_stack(&rabbit).build(handler_fn(move |_v: Value, ctx: Context| {
        let (runs, down, called) = (
            Arc::clone(&noted),
            Arc::clone(&is_down),
            Arc::clone(&called),
        );
        async move {
            if down.load(Ordering::SeqCst) {
                called.fetch_add(1, Ordering::SeqCst);
                return Err(HandlerError::unavailable("the dependency is down"));
            }
            note(&runs, &ctx);
            Ok(())
        }
    }));
    const TRIP_AFTER: u32 = 4;
    let source = rabbit
        .source(&queue, 1)
        .await
        .expect("source")
        .consumer_timeout(CONSUMER_TIMEOUT)
        .timeout_margin(Duration::from_millis(1500));
    let runner = Runner::new(source, stack)
        .with_breaker(BreakerConfig::new(TRIP_AFTER, Duration::from_millis(500)));
    let (breaker, readiness, token) = (
        runner.breaker(),
        runner.readiness(),
        runner.shutdown_token(),
    );
    let run = tokio::spawn(runner.run());
    let calls_reach = |n: u32| {
        let calls = Arc::clone(&calls);
        move || {
            let c = calls.load(Ordering::SeqCst);
            async move { (c >= n).then_some(()) }
        }
    };
    // TRIP_AFTER - 1 outages leave it closed (checked before their
    // postponed copies come back from the delay queue).
    let ids: Vec<String> = (0..TRIP_AFTER).map(|i| format!("{queue}-{i}")).collect();
    publish(&rabbit, &queue, ids[..ids.len() - 1].to_vec()).await;
    poll(
        Duration::from_secs(5),
        Duration::from_millis(5),
        calls_reach(TRIP_AFTER - 1),
    )
    .await
    .expect("the first outages");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "{} outages",
        TRIP_AFTER - 1
    );
    assert_eq!(breaker.trips(), 0);
    publish(&rabbit, &queue, [ids[ids.len() - 1].clone()]).await;
    poll(
        Duration::from_secs(5),
        Duration::from_millis(5),
        calls_reach(TRIP_AFTER),
    )
    .await
    .expect("the last outage");
    // The breaker counts an outage once its delivery is settled (the copy
    // confirmed on the delay queue, the ack sent), a moment after the
    // handler's call: waited for, then exactly one trip.
    poll(Duration::from_secs(10), Duration::from_millis(5), || {
        let trips = breaker.trips();
        async move { (trips > 0).then_some(()) }
    })
    .await
    .expect("the last outage is counted");
    assert_eq!(breaker.trips(), 1, "the {TRIP_AFTER}th outage trips it");
    assert!(!readiness.is_ready(), "not ready while open");
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    // The copies come back after the tier's delay; a half-open probe closes it.
    let all = poll(BREAKER_TIER * 3, Duration::from_millis(50), || {
        let (n, state) = (runs.lock().unwrap().len(), breaker.state());
        let want = ids.len();
        async move { (n >= want && state == BreakerState::Closed).then_some(()) }
    })
    .await;
    assert!(
        all.is_some(),
        "recovered and ran everything: {:?}",
        runs.lock().unwrap()
    );
    assert!(readiness.is_ready(), "ready again");
    // Manual pause and resume on the running runner.
    breaker.pause();
    poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let ready = readiness.is_ready();
        async move { (!ready).then_some(()) }
    })
    .await
    .expect("paused: not ready");
    let late = format!("{queue}-late");
    publish(&rabbit, &queue, [late.clone()]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        runs.lock().unwrap().iter().all(|r| r.id != late),
        "nothing runs while paused"
    );
    breaker.resume();
    // Readiness flips as the pause begins, before the consumer's cancel
    // returned: a message published in that gap was delivered and is
    // postponed through the tier, so it may come back only after it.
    poll(
        BREAKER_TIER + Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let ran = runs.lock().unwrap().iter().any(|r| r.id == late);
            async move { ran.then_some(()) }
        },
    )
    .await
    .expect("runs after resume");
    token.cancel();
    let summary = run.await.expect("join").expect("run");
    rabbit.close().await;
    assert_eq!(depth(&format!("{queue}.dlq")).await, 0, "{summary}");
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), ids.len() + 1, "each ran once: {runs:?}");
    assert!(runs.iter().all(|r| r.delivery_count.is_none()), "{runs:?}");
}

/// What pausing relies on: `basic.cancel` releases nothing already
/// delivered (no return, no delivery count), and those deliveries can still
/// be acked on their channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_cancel_releases_nothing_already_delivered() {
    let (queue, rabbit) = fresh_queue("outages_cancel").await;
    publish(&rabbit, &queue, (0..3).map(|i| format!("{queue}-{i}"))).await;
    let (connection, channel, mut consumer) = raw_consumer(&queue, 3, "paused").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(consumer.next().await.expect("delivery").expect("ok"));
    }
    channel
        .basic_cancel("paused".into(), Default::default())
        .await
        .expect("cancel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(depth(&queue).await, 0, "nothing returned by the cancel");
    for delivery in held {
        let acked = delivery.acker.ack(BasicAckOptions::default()).await;
        assert!(
            matches!(acked, Ok(true)),
            "acked after the cancel: {acked:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(channel.status().connected(), "the acks were valid");
    assert_eq!(depth(&queue).await, 0);
    let _ = connection.close(200, "OK".into()).await;
    rabbit.close().await;
}

/// The offset `group` committed on partition 0 of `topic`.
fn committed(group: &str, topic: &str) -> Option<i64> {
    use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use backstop_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", backstop_kafka::brokers_from_env())
        .set("group.id", group)
        .create()
        .ok()?;
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = client
        .committed_offsets(list, Duration::from_secs(10))
        .ok()?;
    match committed.find_partition(topic, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The group's members (ids), as the broker sees them.
fn members(group: &str) -> Vec<String> {
    use backstop_kafka::rdkafka::ClientConfig;
    use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", backstop_kafka::brokers_from_env())
        .create()
        .expect("client");
    let list = client
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("group list");
    list.groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.id().to_owned()))
        .collect()
}

/// Redis stopped for longer than the member's poll interval under a Kafka
/// source: the partitions are paused while polling goes on (the member is
/// never expelled), nothing is committed past the unfinished messages, and
/// every message runs once after Redis returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_on_kafka_pauses_the_partitions_and_commits_nothing_past_unfinished_work() {
    services().await;
    let _one = OUTAGES.lock().await;
    recover("redis").await;
    let group = unique("outages_group");
    let topic = unique("outages_topic");
    let kafka = backstop_kafka::Kafka::new(backstop_kafka::brokers_from_env(), group.clone())
        .configure(|c| {
            c.session_timeout = Duration::from_secs(6);
            c.auto_commit_interval = Duration::from_millis(200);
            // Shorter than the outage: a member that stopped polling would be expelled.
            c.consumer_properties
                .insert("max.poll.interval.ms".into(), "7000".into());
        });
    kafka
        .ensure_topics([
            backstop_kafka::TopicSpec::new(topic.clone()).partitions(1),
            backstop_kafka::TopicSpec::new(kafka.dlq_topic(&topic)).partitions(1),
        ])
        .await
        .expect("topics");
    let store = redis_store(&unique("outages")).await;
    let runs: Runs = Arc::default();
    let stack = StackBuilder::<Value>::new(Arc::new(kafka.dead_letter_sink().expect("dlq")))
        .nack_delay(NACK_DELAY)
        .idempotency(
            Arc::new(backstop::idempotency::Namespaced::new(store, group.clone())),
            KeySource::MessageId,
        )
        .build(noting(&runs));
    const CONCURRENCY: usize = 4;
    let source = kafka
        .plain_source(&[topic.as_str()], CONCURRENCY)
        .expect("source");
    let runner = Runner::new(source, stack)
        .concurrency(CONCURRENCY)
        .with_breaker(BreakerConfig::new(3, Duration::from_millis(700)));
    let (breaker, readiness, token) = (
        runner.breaker(),
        runner.readiness(),
        runner.shutdown_token(),
    );
    let run = tokio::spawn(runner.run());
    let publisher = kafka.publisher().expect("publisher");
    let send = |ids: Vec<String>| {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        async move {
            for id in ids {
                let body = serde_json::json!({ "id": id }).to_string();
                publisher
                    .publish(&topic, &Message::new(body).with_message_id(id))
                    .await
                    .expect("publish");
            }
        }
    };
    let ran = |n: usize| {
        let runs = Arc::clone(&runs);
        move || {
            let len = runs.lock().unwrap().len();
            async move { (len >= n).then_some(()) }
        }
    };
    send(vec![format!("{topic}-warm")]).await;
    poll(Duration::from_secs(30), Duration::from_millis(50), ran(1))
        .await
        .expect("the warm-up message ran");
    let (g, t) = (group.clone(), topic.clone());
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let c = committed(&g, &t);
        async move { (c == Some(1)).then_some(()) }
    })
    .await
    .expect("the warm-up message committed");
    let before = members(&group);
    assert_eq!(before.len(), 1, "{before:?}");

    let stop = CancellationToken::new();
    let sampler = sample(breaker.clone(), readiness.clone(), stop.clone());
    outage("redis").await;
    let ids: Vec<String> = (0..10).map(|i| format!("{topic}-{i}")).collect();
    send(ids.clone()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let committed_in_outage = committed(&group, &topic);
    let members_in_outage = members(&group);
    recover("redis").await;
    poll(Duration::from_secs(30), Duration::from_millis(100), ran(11))
        .await
        .unwrap_or_else(|| {
            panic!(
                "every message ran after Redis returned: {:?}",
                runs.lock().unwrap()
            )
        });
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let c = committed(&g, &t);
        async move { (c == Some(11)).then_some(()) }
    })
    .await
    .expect("everything committed after the outage");
    stop.cancel();
    token.cancel();
    let summary = run.await.expect("join").expect("run");
    let seen = sampler.await.expect("sampler");
    eprintln!("kafka outage: {summary}");

    assert_eq!(
        committed_in_outage,
        Some(1),
        "nothing committed past the first unfinished message during the outage"
    );
    assert_eq!(members_in_outage, before, "the member was never expelled");
    let runs = runs.lock().unwrap().clone();
    let mut all = vec![format!("{topic}-warm")];
    all.extend(ids);
    for id in &all {
        let n = runs.iter().filter(|r| &r.id == id).count();
        assert_eq!(n, 1, "{id} ran {n} times");
    }
    assert_eq!(summary.dead_lettered, 0, "{summary}");
    assert_opened_and_closed(&seen, breaker.trips());
    // Paused: while open nothing is fetched, so only the deliveries in
    // flight at the trip and one probe per cool-down were nacked (without
    // the breaker, every message cycles every nack delay).
    let bound = CONCURRENCY as u64 + breaker.trips() + 2;
    assert!(
        summary.nacked <= bound,
        "at most {bound} nacks while paused: {summary}"
    );
}

/// A broker that stops answering while a consumer stops (its connection
/// stays open, nothing passes either way): closing the source, then the
/// client, each gives up after its bound instead of hanging the worker's
/// stop, and the delivery left unacked is not lost: the broker requeues it
/// once the connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_against_a_broker_that_stopped_answering_gives_up_and_loses_nothing() {
    use backstop::runner::Source as _;
    let _one = OUTAGES.lock().await;
    let (queue, rabbit) = fresh_queue("close-stalled").await;
    publish(&rabbit, &queue, ["m1".to_owned()]).await;
    let proxy = backstop_tests::proxy::Proxy::start("127.0.0.1:5684".parse().expect("address"))
        .await
        .expect("proxy");
    let through = RabbitMq::connect(format!("amqp://guest:guest@{}/%2f", proxy.addr()))
        .await
        .expect("connect through the proxy");
    let mut source = through.source(&queue, 4).await.expect("source");
    let delivery = tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .expect("the message is delivered")
        .expect("the source is open")
        .expect("a delivery");
    assert_eq!(delivery.message().meta.message_id, "m1");
    proxy.stall();

    // Without a bound both closes wait forever; 60 s fails them here instead.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), source.close())
        .await
        .expect("closing the source hung on the silent broker");
    let source_closed = started.elapsed();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), through.close())
        .await
        .expect("closing the client hung on the silent broker");
    let client_closed = started.elapsed();
    assert!(
        source_closed < Duration::from_secs(20) && client_closed < Duration::from_secs(20),
        "closes gave up after {source_closed:?} and {client_closed:?}"
    );

    // The connection goes; the unacked delivery is the broker's again.
    drop(delivery);
    proxy.cut();
    let requeued = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { (depth(&queue).await == 1).then_some(()) },
    )
    .await;
    assert!(requeued.is_some(), "the unacked delivery was not requeued");
    rabbit.close().await;
}
