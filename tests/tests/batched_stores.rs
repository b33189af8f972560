//! The stack's batched store calls ([`Batched`]) on real Redis and
//! PostgreSQL (`BACKSTOP_REDIS_URL`, `BACKSTOP_PG_URL`, the shared servers):
//!
//! - 200 concurrent claims and completions go out in a few round trips
//!   (counted by a wrapper around the real store), each answered as the
//!   single-key calls answer the same states;
//! - the store becomes unreachable in the middle of a run (a TCP proxy this
//!   test cuts; the shared server keeps running): nothing is acked whose
//!   completion was not written, and the messages whose completion failed
//!   are redelivered and complete exactly once after the store is back;
//! - the same under a worker on a real RabbitMQ quorum queue (acks
//!   coalesced into `multiple` frames), stopped while the store is still
//!   cut off: every message the broker no longer holds has its key
//!   completed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::error::{Failure, StoreError};
use backstop::idempotency::Store;
use backstop::idempotency::{
    BatchConfig, Batched, Claim, ClaimOf, Config, Fence, Held, Key, KeySource, Keyspace, Layout,
};
use backstop::memory::{MemoryBroker, dlq_name};
use backstop::{
    CancellationToken, Context, HandlerError, Message, Runner, StackBuilder, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_redis::{RedisConfig, RedisStore};
use backstop_tests::proxy::Proxy;
use backstop_tests::{poll, unique};
use futures::future::join_all;

const LEASE: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn pg_url() -> String {
    std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned())
}

/// The `host:port` of `url` (after the scheme and any user, before the path).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    url.replacen(host_port(url), &addr.to_string(), 1)
}

async fn proxy_to(url: &str) -> Proxy {
    let target = tokio::net::lookup_host(host_port(url))
        .await
        .expect("the server's address resolves")
        .next()
        .expect("an address");
    Proxy::start(target).await.expect("the proxy starts")
}

/// A remote store to test: an instance on the server, or through `proxy`.
trait Server {
    async fn store(&self, proxy: Option<&Proxy>) -> Arc<dyn Store>;
    fn url(&self) -> String;
    async fn clean_up(&self) {}
}

struct Redis {
    prefix: String,
}

impl Redis {
    fn new() -> Self {
        Redis {
            prefix: format!("backstop-test:batched:{}:", unique("r")),
        }
    }
}

impl Server for Redis {
    async fn store(&self, proxy: Option<&Proxy>) -> Arc<dyn Store> {
        let url = proxy.map_or_else(redis_url, |p| through(&redis_url(), p.addr()));
        let store = RedisStore::connect_with(
            RedisConfig::new(url)
                .prefix(&self.prefix)
                .operation_timeout(Duration::from_millis(500))
                .connect_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("Redis runs (scripts/services/redis.sh)");
        Arc::new(store)
    }

    fn url(&self) -> String {
        redis_url()
    }
}

struct Postgres {
    table: String,
}

impl Postgres {
    fn new() -> Self {
        Postgres {
            table: unique("bt_batched"),
        }
    }
}

impl Server for Postgres {
    async fn store(&self, proxy: Option<&Proxy>) -> Arc<dyn Store> {
        let url = proxy.map_or_else(pg_url, |p| through(&pg_url(), p.addr()));
        let pool = PgConfig::new(url)
            .max_connections(4)
            .connect_timeout(Duration::from_secs(1))
            .wait_timeout(Duration::from_secs(1))
            .pool()
            .expect("a pool");
        let store = PostgresStore::new(pool)
            .with_table(&self.table)
            .expect("a table name")
            .operation_timeout(Duration::from_secs(1));
        store
            .migrate()
            .await
            .expect("PostgreSQL runs (scripts/services/postgres.sh)");
        Arc::new(store)
    }

    fn url(&self) -> String {
        pg_url()
    }

    async fn clean_up(&self) {
        let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL runs");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await
            .expect("drop the test's table");
    }
}

/// The real store, its round trips counted: one a call, batch or not, and
/// the completions it answered, by key.
struct Counting {
    inner: Arc<dyn Store>,
    round_trips: AtomicU32,
    /// Completions that failed with an error (the store unreachable; the
    /// stack's background retries of a completion included).
    failed_completions: AtomicU32,
    /// Completions the store accepted, by key.
    completed: Mutex<HashMap<Key, u32>>,
    /// While false, batch calls wait before they reach the store (see
    /// [`Counting::all_queued`]).
    open: tokio::sync::watch::Sender<bool>,
}

impl Counting {
    fn new(inner: Arc<dyn Store>) -> Self {
        Counting {
            inner,
            round_trips: AtomicU32::new(0),
            failed_completions: AtomicU32::new(0),
            completed: Mutex::default(),
            open: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Runs `calls` (concurrent calls through a [`Batched`] over this
    /// store) with every call queued before any round trip comes back:
    /// the batch calls wait while `calls` is polled until each call has
    /// been polled once. Without it the count of round trips depends on
    /// the machine's load (a round trip that comes back before the next
    /// call is queued takes fewer along).
    async fn all_queued<F: std::future::Future>(&self, calls: F) -> F::Output {
        self.open.send_replace(false);
        let mut calls = std::pin::pin!(calls);
        // One poll of a join polls every call once; a few more cover a
        // join that yields part-way.
        for _ in 0..8 {
            if let std::task::Poll::Ready(out) = futures::poll!(calls.as_mut()) {
                self.open.send_replace(true);
                return out;
            }
        }
        self.open.send_replace(true);
        calls.await
    }

    /// Waits while [`all_queued`](Self::all_queued) holds batch calls back.
    async fn wait_open(&self) {
        let mut open = self.open.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }

    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
    }

    fn trips(&self) -> u32 {
        self.round_trips.load(Ordering::SeqCst)
    }

    fn completed(&self, key: &Key, answer: &Result<bool, StoreError>) {
        match answer {
            Ok(true) => {
                *self
                    .completed
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default() += 1
            }
            Ok(false) => {}
            Err(_) => {
                self.failed_completions.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.trip();
        self.inner.claim(k, o, l, r).await
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        self.trip();
        self.inner.renew(k, f, l).await
    }
    async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.trip();
        let answer = self.inner.complete(k, f).await;
        self.completed(k, &answer);
        answer
    }
    async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.trip();
        self.inner.mark_dead_lettered(k, f).await
    }
    async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
        self.trip();
        self.inner.release(k, f, n).await
    }
    async fn release_with_letter(
        &self,
        k: &Key,
        f: Fence,
        l: &Failure,
    ) -> Result<bool, StoreError> {
        self.trip();
        self.inner.release_with_letter(k, f, l).await
    }
    fn storage_key(&self, key: &Key) -> Key {
        self.inner.storage_key(key)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    async fn layout(&self) -> Result<Layout, StoreError> {
        self.trip();
        self.inner.layout().await
    }
    async fn claim_many(&self, c: &[ClaimOf<'_>], l: Duration) -> Vec<Result<Claim, StoreError>> {
        self.trip();
        self.wait_open().await;
        self.inner.claim_many(c, l).await
    }
    async fn renew_many(&self, h: &[Held<'_>], l: Duration) -> Vec<Result<bool, StoreError>> {
        self.trip();
        self.inner.renew_many(h, l).await
    }
    async fn complete_many(&self, h: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        self.trip();
        self.wait_open().await;
        let answers = self.inner.complete_many(h).await;
        for (held, answer) in h.iter().zip(&answers) {
            self.completed(held.key, answer);
        }
        answers
    }
}

/// A claim's answer without what differs between two runs (its fence, the
/// time left on a busy lease).
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Acquired { failed_runs: u32, crashed: bool },
    LetterPending,
    Completed,
    DeadLettered,
    Busy,
}

fn shape(claim: &Claim) -> Shape {
    match claim {
        Claim::Acquired {
            failed_runs,
            crashed,
            ..
        } => Shape::Acquired {
            failed_runs: *failed_runs,
            crashed: *crashed,
        },
        Claim::LetterPending { .. } => Shape::LetterPending,
        Claim::Completed => Shape::Completed,
        Claim::DeadLettered => Shape::DeadLettered,
        Claim::Busy { .. } => Shape::Busy,
    }
}

/// Puts key `i` of `keys` in one of four states (`i % 4`): absent,
/// completed, held by another owner, dead-lettered.
async fn four_states(store: &dyn Store, keys: &[Key]) {
    join_all(keys.iter().enumerate().map(|(i, key)| async move {
        if i % 4 == 0 {
            return;
        }
        let fence = store
            .claim(key, "other", LEASE, 0)
            .await
            .expect("set-up claim")
            .fence()
            .expect("a new key");
        match i % 4 {
            1 => assert!(store.complete(key, fence).await.expect("set-up")),
            3 => assert!(store.mark_dead_lettered(key, fence).await.expect("set-up")),
            _ => {}
        }
    }))
    .await;
}

/// 200 concurrent claims, then completions of those acquired, through the
/// batcher and with single calls on a twin set of keys: the same answers,
/// the batched ones in a few round trips.
async fn concurrent_calls_go_out_in_few_round_trips(server: impl Server) {
    let store = server.store(None).await;
    let counting = Arc::new(Counting::new(Arc::clone(&store)));
    let batched = Batched::new(Arc::clone(&counting), BatchConfig::default());
    let run = unique("k");
    let twin = |side: &str| -> Vec<Key> {
        (0..200)
            .map(|i| Key::new(&format!("{run}:{side}:{i}")))
            .collect()
    };
    let (keys, single_keys) = (twin("batched"), twin("single"));
    four_states(&*store, &keys).await;
    four_states(&*store, &single_keys).await;

    let before = counting.trips();
    let started = Instant::now();
    let claims = counting
        .all_queued(join_all(
            keys.iter().map(|k| batched.claim(k, "w", LEASE, 0)),
        ))
        .await;
    let claim_trips = counting.trips() - before;
    let claims: Vec<Claim> = claims.into_iter().map(|c| c.expect("a claim")).collect();
    let acquired: Vec<(&Key, Fence)> = keys
        .iter()
        .zip(&claims)
        .filter_map(|(k, c)| Some((k, c.fence()?)))
        .collect();
    let before = counting.trips();
    let completions = counting
        .all_queued(join_all(
            acquired.iter().map(|(k, f)| batched.complete(k, *f)),
        ))
        .await;
    let complete_trips = counting.trips() - before;
    let batched_time = started.elapsed();

    let started = Instant::now();
    let single_claims = join_all(single_keys.iter().map(|k| store.claim(k, "w", LEASE, 0))).await;
    let single_claims: Vec<Claim> = single_claims
        .into_iter()
        .map(|c| c.expect("a claim"))
        .collect();
    let single_acquired: Vec<(&Key, Fence)> = single_keys
        .iter()
        .zip(&single_claims)
        .filter_map(|(k, c)| Some((k, c.fence()?)))
        .collect();
    let single_completions =
        join_all(single_acquired.iter().map(|(k, f)| store.complete(k, *f))).await;
    let single_time = started.elapsed();
    eprintln!(
        "{}: 200 claims in {claim_trips} round trips, {} completions in {complete_trips}; batched {batched_time:?}, single calls {single_time:?}",
        server.url(),
        acquired.len()
    );

    let shapes: Vec<Shape> = claims.iter().map(shape).collect();
    let single_shapes: Vec<Shape> = single_claims.iter().map(shape).collect();
    assert_eq!(
        shapes, single_shapes,
        "batched claims answer as single ones"
    );
    assert_eq!(
        shapes.iter().filter(|s| **s == Shape::Busy).count(),
        50,
        "held by another owner"
    );
    assert_eq!(acquired.len(), 50, "the absent keys");
    let completions: Vec<bool> = completions
        .into_iter()
        .map(|c| c.expect("a completion"))
        .collect();
    let single_completions: Vec<bool> = single_completions
        .into_iter()
        .map(|c| c.expect("a completion"))
        .collect();
    assert_eq!(completions, single_completions);
    assert!(completions.iter().all(|done| *done));
    // One call alone on each of the two round trips a lane may have out,
    // then the rest together on the first to come back.
    assert!(claim_trips <= 3, "200 claims in {claim_trips} round trips");
    assert!(
        complete_trips <= 3,
        "50 completions in {complete_trips} round trips"
    );
    let again = join_all(
        acquired
            .iter()
            .map(|(k, _)| batched.claim(k, "x", LEASE, 0)),
    )
    .await;
    assert!(
        again.iter().all(|c| matches!(c, Ok(Claim::Completed))),
        "completed by the batch"
    );
    server.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_calls_go_out_in_few_round_trips() {
    concurrent_calls_go_out_in_few_round_trips(Redis::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_calls_go_out_in_few_round_trips() {
    concurrent_calls_go_out_in_few_round_trips(Postgres::new()).await;
}

/// What the outage runs share: the store behind a proxy, a handler that
/// cuts the proxy at its `CUT_AT`-th run (then works 20 ms and records the
/// run), and the idempotency configuration.
struct Outage {
    proxy: Arc<Proxy>,
    starts: Arc<AtomicU32>,
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

/// The handler run that cuts the store off.
const CUT_AT: u32 = 100;

impl Outage {
    async fn new(server: &impl Server) -> Self {
        Outage {
            proxy: Arc::new(proxy_to(&server.url()).await),
            starts: Arc::default(),
            runs: Arc::default(),
        }
    }

    /// The handler; any JSON payload.
    fn handler<T>(&self) -> impl backstop::Handle<T>
    where
        T: backstop::Payload + Send + 'static,
    {
        let (started, cutter, seen) = (
            Arc::clone(&self.starts),
            Arc::clone(&self.proxy),
            Arc::clone(&self.runs),
        );
        handler_fn(move |_body: T, ctx: Context| {
            let seen = Arc::clone(&seen);
            if started.fetch_add(1, Ordering::SeqCst) + 1 == CUT_AT {
                cutter.cut();
            }
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                *seen
                    .lock()
                    .unwrap()
                    .entry(ctx.message_id().to_owned())
                    .or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        })
    }

    /// Keyed by message id, with a short lease: one left behind by a failed
    /// completion runs out soon.
    fn config() -> Config {
        Config {
            lease: Duration::from_secs(2),
            ..Config::keyed_by(KeySource::MessageId)
        }
    }

    /// Waits until the cut: the messages in their handlers then hold leases
    /// whose completions cannot be written.
    async fn cut(&self) {
        let starts = Arc::clone(&self.starts);
        assert!(
            poll(
                Duration::from_secs(30),
                Duration::from_millis(5),
                || async { (starts.load(Ordering::SeqCst) >= CUT_AT).then_some(()) }
            )
            .await
            .is_some(),
            "the run started"
        );
    }
}

/// A worker over the in-memory broker and the store behind a proxy, 64
/// messages in flight; the 100th handler run cuts the proxy for a second,
/// while the messages beside it are in their handlers. Every message ends acked exactly once with its key completed in
/// the store (read directly), each key completed by one accepted
/// completion; the completions that failed were not acked (their messages
/// ran again once their lease ran out).
async fn nothing_acked_whose_completion_was_not_written(server: impl Server) {
    const N: usize = 400;
    let outage = Outage::new(&server).await;
    let proxy = Arc::clone(&outage.proxy);
    let counting = Arc::new(Counting::new(server.store(Some(&proxy)).await));
    let direct = server.store(None).await;
    let queue = "batched-outage";
    let broker = MemoryBroker::new();
    let runs = Arc::clone(&outage.runs);
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency_with(Arc::clone(&counting) as Arc<dyn Store>, Outage::config())
        .nack_delay(Duration::from_millis(50))
        .build(outage.handler());
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(broker.consume(queue, 128), stack)
            .concurrency(64)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    let ids: Vec<String> = (0..N).map(|i| format!("m-{i}")).collect();
    for id in &ids {
        broker
            .publish_now(queue, Message::new("{}").with_message_id(id.clone()))
            .expect("an in-memory queue takes it");
    }
    outage.cut().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = broker.stats(queue);
    proxy.restore();
    let done = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let stats = broker.stats(queue);
            (stats.acked as usize >= N && stats.ready == 0 && stats.unacked == 0).then_some(stats)
        },
    )
    .await;
    shutdown.cancel();
    let summary = runner.await.expect("the runner task").expect("the runner");
    let stats = broker.stats(queue);
    assert!(
        done.is_some(),
        "every message settled: {stats:?}, {summary}"
    );

    let failed = counting.failed_completions.load(Ordering::SeqCst);
    assert!(failed > 0, "the cut hit completions in flight ({during:?})");
    assert_eq!(
        stats.acked as usize, N,
        "each message acked once: {stats:?}"
    );
    assert!(stats.nacked > 0, "the failed ones were nacked: {stats:?}");
    assert_eq!(
        broker.stats(&dlq_name(queue)).published,
        0,
        "none dead-lettered"
    );
    let keyspace = Keyspace::new(queue, None, None);
    let keys: Vec<Key> = ids.iter().map(|id| keyspace.key(&Key::new(id))).collect();
    // Read directly: every message acked has its key completed.
    let states = join_all(keys.iter().map(|k| direct.claim(k, "check", LEASE, 0))).await;
    let not_completed: Vec<_> = keys
        .iter()
        .zip(&states)
        .filter(|(_, s)| !matches!(s, Ok(Claim::Completed)))
        .collect();
    assert!(
        not_completed.is_empty(),
        "acked but not completed: {not_completed:?}"
    );
    let completed = counting.completed.lock().unwrap().clone();
    assert!(
        completed.values().all(|n| *n == 1),
        "each key completed once"
    );
    assert_eq!(
        summary.handled + summary.duplicates,
        N as u64,
        "each acked once, handled or a duplicate: {summary}"
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), N, "every message ran");
    let again = runs.values().filter(|n| **n > 1).count();
    eprintln!(
        "{}: {failed} completions failed during the cut; {again} messages ran again; {summary}",
        server.url()
    );
    server.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_mid_batch_acks_nothing_whose_completion_was_not_written() {
    nothing_acked_whose_completion_was_not_written(Redis::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_mid_batch_acks_nothing_whose_completion_was_not_written() {
    nothing_acked_whose_completion_was_not_written(Postgres::new()).await;
}

/// The same outage under a worker on a real RabbitMQ quorum queue (acks
/// coalesced into `multiple` frames): the worker is stopped while the
/// store is still cut off, so at that moment every message the broker no
/// longer holds was acked, and each must have its key completed (read
/// directly). The messages still queued (read back without acking) are
/// those whose claim or completion failed, or never ran.
async fn rabbitmq_acks_nothing_whose_completion_was_not_written(server: impl Server) {
    use backstop::publish::Publisher;
    use backstop_rabbitmq::lapin::options::{BasicGetOptions, QueueDeleteOptions};
    use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};

    const N: usize = 300;
    let outage = Outage::new(&server).await;
    let proxy = Arc::clone(&outage.proxy);
    let store = server.store(Some(&proxy)).await;
    let direct = server.store(None).await;
    let rabbit = RabbitMq::connect(url_from_env())
        .await
        .expect("RabbitMQ runs (scripts/services/rabbitmq.sh)");
    let topology = Topology::quorum(unique("batched-rabbit"));
    rabbit.declare(&topology).await.expect("declare");
    let queue = topology.queue().to_owned();
    let ids: Vec<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let publisher = rabbit.publisher();
    for chunk in ids.chunks(50) {
        join_all(chunk.iter().map(|id| {
            let message = Message::new("{}").with_message_id(id.clone());
            let (publisher, queue) = (publisher.clone(), queue.clone());
            async move { publisher.publish(&queue, &message).await }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("confirmed");
    }
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .idempotency_with(store, Outage::config())
        .nack_delay(Duration::from_millis(50))
        .build(outage.handler());
    let shutdown = CancellationToken::new();
    let source = rabbit.source(&queue, 64).await.expect("consume");
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(64)
            .shutdown_deadline(Duration::from_secs(5))
            .with_shutdown(shutdown.clone())
            .run(),
    );
    outage.cut().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    let summary = runner.await.expect("the runner task").expect("the runner");

    // Still cut off. What the queue holds was not acked: read it back
    // without acking (closing the channel returns it).
    let channel = rabbit.channel().await.expect("channel");
    let mut queued = std::collections::HashSet::new();
    while let Ok(Some(got)) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
    {
        let id = got
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        queued.insert(id);
    }
    let _ = channel.close(200, "OK".into()).await;
    let acked: Vec<&String> = ids.iter().filter(|id| !queued.contains(*id)).collect();
    assert!(!acked.is_empty(), "some messages were acked: {summary}");
    assert!(
        !queued.is_empty(),
        "the cut left messages unacked: {summary}"
    );
    let keyspace = Keyspace::new(&queue, None, None);
    let states = join_all(acked.iter().map(|id| {
        let key = keyspace.key(&Key::new(id.as_str()));
        let direct = Arc::clone(&direct);
        async move { (key.clone(), direct.claim(&key, "check", LEASE, 0).await) }
    }))
    .await;
    let not_completed: Vec<_> = states
        .iter()
        .filter(|(_, state)| !matches!(state, Ok(Claim::Completed)))
        .collect();
    assert!(
        not_completed.is_empty(),
        "acked but not completed ({} acked, {} queued): {not_completed:?}",
        acked.len(),
        queued.len()
    );
    eprintln!(
        "rabbitmq + {}: {} acked (each completed), {} still queued; {summary}",
        server.url(),
        acked.len(),
        queued.len()
    );
    proxy.restore();
    if let Ok(channel) = rabbit.channel().await {
        for q in [queue.clone(), topology.dlq()] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    server.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_redis_cut_off_acks_nothing_whose_completion_was_not_written() {
    rabbitmq_acks_nothing_whose_completion_was_not_written(Redis::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_postgres_cut_off_acks_nothing_whose_completion_was_not_written() {
    rabbitmq_acks_nothing_whose_completion_was_not_written(Postgres::new()).await;
}
