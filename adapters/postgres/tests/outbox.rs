//! The transactional outbox on a real PostgreSQL: a handler's publishes
//! commit with its effects or not at all, the relay sends each row with a
//! confirm and deletes it only then, per key in order, one relay leading
//! at a time with a takeover when its session ends.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::memory::{MemoryBroker, dlq_name};
use backstop::publish::{PublishError, Publisher};
use backstop::{
    Context, Handle, HandlerError, Message, RetryPolicy, Runner, Stack, StackBuilder, Summary,
};
use backstop_postgres::outbox::RelayConfig;
use backstop_postgres::{Inbox, InboxTx, Outbox, PgConfig};
use metrics::SharedString;
use metrics_util::registry::AtomicStorage;
use tokio_postgres::Client;

const QUEUE: &str = "outbox-test";
const EVENTS: &str = "outbox-events";

struct Fixture {
    admin: Client,
    schema: common::Schema,
    inbox: Inbox,
    outbox: Outbox,
    effects: String,
    broker: MemoryBroker,
}

fn pool(app: &str) -> deadpool_postgres::Pool {
    PgConfig::new(common::url())
        .application_name(app)
        .max_connections(6)
        .connect_timeout(Duration::from_secs(10))
        .pool()
        .expect("pool")
}

async fn fixture() -> Fixture {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let pool = pool(&common::unique("outbox_test"));
    let outbox = Outbox::new(pool.clone())
        .with_table(&schema.table("outbox"))
        .expect("table name");
    outbox.migrate().await.expect("migrate the outbox");
    let inbox = Inbox::new(pool)
        .with_table(&schema.table("inbox"))
        .expect("table name")
        .consumer("test")
        .outbox(&outbox);
    inbox.migrate().await.expect("migrate the inbox");
    let effects = schema.table("effects");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (message_id text NOT NULL)"
        ))
        .await
        .expect("effects table");
    Fixture {
        admin,
        schema,
        inbox,
        outbox,
        effects,
        broker: MemoryBroker::new(),
    }
}

/// A relay config that notices things quickly.
fn quick() -> RelayConfig {
    RelayConfig::default()
        .relay(
            backstop_spool::RelayConfig::default()
                .idle_poll(Duration::from_millis(50))
                .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .standby_poll(Duration::from_millis(100))
        .attempt_timeout(Duration::from_secs(2))
        .depth_every(Duration::from_millis(100))
}

/// Gauges by key, each an atomic holding the value last set.
type GaugeRegistry = metrics_util::registry::Registry<metrics::Key, AtomicStorage>;

/// The gauges every test of this binary sets, each as last set. (The
/// debugging recorder's snapshot resets a gauge to 0, so a test that reads
/// one in a loop could not tell a gauge set to 0 from one it just read.)
fn gauges() -> &'static Arc<GaugeRegistry> {
    static GAUGES: std::sync::OnceLock<Arc<GaugeRegistry>> = std::sync::OnceLock::new();
    GAUGES.get_or_init(|| {
        let registry = Arc::new(GaugeRegistry::atomic());
        let _ = metrics::set_global_recorder(Gauges(Arc::clone(&registry)));
        registry
    })
}

/// A recorder that keeps gauges only.
struct Gauges(Arc<GaugeRegistry>);

impl metrics::Recorder for Gauges {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(Arc::clone(g)))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The last value of `backstop_spool_depth{spool="outbox:<table>"}`.
fn depth(f: &Fixture) -> Option<f64> {
    let name = format!("outbox:{}", f.outbox.table());
    gauges()
        .get_gauge_handles()
        .into_iter()
        .find_map(|(key, value)| {
            let ours = key.name() == backstop_spool::metrics::DEPTH
                && key
                    .labels()
                    .any(|l| l.key() == "spool" && l.value() == name);
            ours.then(|| f64::from_bits(value.load(Ordering::SeqCst)))
        })
}

impl Fixture {
    fn stack(&self, handler: Placer) -> Stack {
        StackBuilder::<String>::new(Arc::new(self.broker.dead_letter_sink()))
            .retry(
                RetryPolicy::retries(3)
                    .backoff(Duration::from_millis(10), Duration::from_millis(50)),
            )
            .around_attempt(self.inbox.layer())
            .build(handler)
    }

    async fn drain(&self, stack: Stack) -> Summary {
        Runner::new(self.broker.consume(QUEUE, 8).until_drained(), stack)
            .concurrency(4)
            .run()
            .await
            .expect("run")
    }

    async fn rows(&self) -> i64 {
        common::count(&self.admin, &self.schema.table("outbox")).await
    }

    /// Waits until the outbox has `n` rows (the relay deletes a row just
    /// after its confirm); how many it has then.
    async fn rows_become(&self, n: i64) -> i64 {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.rows().await;
            if rows == n || tokio::time::Instant::now() >= until {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn effects(&self) -> i64 {
        common::count(&self.admin, &self.effects).await
    }

    /// Waits until `queue` holds `n` messages; what it holds then.
    async fn wait_for(&self, queue: &str, n: usize) -> Vec<Message> {
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.broker.peek(queue);
            if seen.len() >= n || tokio::time::Instant::now() >= until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) {
        self.schema.drop_all(&self.admin).await;
    }
}

/// Writes an effect, publishes "created" and "confirmed" for the order
/// (keyed by the order), then fails as told.
#[derive(Clone)]
struct Placer {
    effects: String,
    runs: Arc<AtomicU32>,
    /// Orders whose first run fails after publishing (transient).
    flaky: Vec<String>,
    /// Orders that always fail after publishing (permanent: dead-lettered).
    broken: Vec<String>,
}

impl Placer {
    fn new(f: &Fixture) -> Self {
        Placer {
            effects: f.effects.clone(),
            runs: Arc::default(),
            flaky: Vec::new(),
            broken: Vec::new(),
        }
    }
}

/// Writes the message's effect row through the inbox transaction.
async fn write_effect(effects: &str, ctx: &Context) -> Result<(), HandlerError> {
    let tx = InboxTx::from_context(ctx)?;
    let sql = format!("INSERT INTO {effects} (message_id) VALUES ($1)");
    tx.execute(&sql, &[&ctx.message_id()]).await?;
    Ok(())
}

impl Handle<String> for Placer {
    type Error = HandlerError;

    async fn handle(&self, order: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        write_effect(&self.effects, &ctx).await?;
        for step in ["created", "confirmed"] {
            let event = Message::new(format!("{order}:{step}")).with_key(order.clone());
            ctx.publish(EVENTS, event).await?;
        }
        if self.broken.contains(&order) {
            return Err(HandlerError::permanent("refused after publishing"));
        }
        if self.flaky.contains(&order) && ctx.attempt() == 1 {
            return Err(HandlerError::transient("flaked after publishing"));
        }
        Ok(())
    }
}

fn publish_orders(broker: &MemoryBroker, orders: &[String]) {
    for order in orders {
        broker
            .publish_now(
                QUEUE,
                Message::new(order.clone()).with_message_id(format!("in-{order}")),
            )
            .expect("publish");
    }
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_commit_with_the_effects_and_are_relayed_once_in_order() {
    let f = fixture().await;
    let orders: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
    let placer = Placer {
        flaky: vec!["o3".into(), "o7".into()],
        broken: vec!["o5".into()],
        ..Placer::new(&f)
    };
    publish_orders(&f.broker, &orders);
    let relay = f.outbox.relay(f.broker.clone(), quick());
    let summary = f.drain(f.stack(placer.clone())).await;
    assert_eq!(summary.handled, 19, "{summary:?}");
    assert_eq!(summary.dead_lettered, 1, "o5 is dead-lettered");
    assert_eq!(f.broker.stats(&dlq_name(QUEUE)).published, 1);
    assert_eq!(
        f.effects().await,
        19,
        "the failed runs rolled back their effects"
    );

    let events = f.wait_for(EVENTS, 38).await;
    // Nothing more arrives: the rolled-back runs' publishes never existed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = if events.len() == 38 {
        f.broker.peek(EVENTS)
    } else {
        events
    };
    assert_eq!(
        events.len(),
        38,
        "two events per handled order: {:?}",
        bodies(&events)
    );
    let seen = bodies(&events);
    assert!(
        !seen.iter().any(|b| b.starts_with("o5:")),
        "the dead-lettered order published nothing"
    );
    for order in orders.iter().filter(|o| *o != "o5") {
        let created = seen.iter().position(|b| *b == format!("{order}:created"));
        let confirmed = seen.iter().position(|b| *b == format!("{order}:confirmed"));
        assert!(
            created.is_some() && confirmed.is_some(),
            "{order}: {seen:?}"
        );
        assert!(
            created < confirmed,
            "{order}: events out of order: {seen:?}"
        );
    }
    // Ids are derived from the handled message: stable across the retry.
    let o3: Vec<&str> = events
        .iter()
        .filter(|m| m.key.as_deref() == Some(&b"o3"[..]))
        .map(|m| m.meta.message_id.as_str())
        .collect();
    assert_eq!(
        o3,
        [
            "test@outbox-test:in-o3:out:0",
            "test@outbox-test:in-o3:out:1"
        ],
        "the consumer's keyspace, the handled message's id, the place"
    );
    assert!(
        events
            .iter()
            .all(|m| m.header(backstop::outgoing::CAUSED_BY).is_some())
    );
    assert_eq!(f.rows_become(0).await, 0, "every confirmed row was deleted");
    assert!(relay.is_leading());
    relay.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_the_inbox_skips_publishes_nothing_again() {
    let f = fixture().await;
    let placer = Placer::new(&f);
    let orders = vec!["a".to_owned()];
    publish_orders(&f.broker, &orders);
    f.drain(f.stack(placer.clone())).await;
    publish_orders(&f.broker, &orders);
    let summary = f.drain(f.stack(placer.clone())).await;
    assert_eq!(summary.handled, 1);
    assert_eq!(
        placer.runs.load(Ordering::SeqCst),
        1,
        "the copy skipped the handler"
    );
    assert_eq!(f.rows().await, 2, "one order's two rows, written once");
    let relay = f.outbox.relay(f.broker.clone(), quick());
    assert_eq!(f.wait_for(EVENTS, 2).await.len(), 2);
    relay.stop().await;
    f.finish().await;
}

/// A publisher in front of the in-memory broker that refuses bodies
/// containing "poison" for good and can be switched unreachable.
#[derive(Clone)]
struct Gate {
    broker: MemoryBroker,
    down: Arc<AtomicBool>,
    tries: Arc<Mutex<HashMap<String, u32>>>,
}

impl Gate {
    fn new(broker: MemoryBroker) -> Self {
        Gate {
            broker,
            down: Arc::default(),
            tries: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for Gate {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        let body = String::from_utf8_lossy(&message.payload).into_owned();
        *self
            .tries
            .lock()
            .expect("lock")
            .entry(body.clone())
            .or_default() += 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(PublishError::Unavailable("connection refused".into()));
        }
        if body.contains("poison") {
            return Err(PublishError::TooLarge { size: 9_999_999 });
        }
        self.broker.publish(destination, message).await
    }
}

/// Writes `bodies` (key `key`) into the outbox in one transaction of the test's own.
async fn write(f: &Fixture, key: &str, bodies: &[&str]) {
    write_on(f, &mut connect().await, key, bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_refused_for_good_is_set_aside_and_its_key_goes_on() {
    let f = fixture().await;
    let gate = Gate::new(f.broker.clone());
    write(&f, "k", &["k1", "k2-poison", "k3"]).await;
    let relay = f.outbox.relay(gate.clone(), quick());
    let events = f.wait_for(EVENTS, 2).await;
    assert_eq!(bodies(&events), ["k1", "k3"]);
    let refused = f.outbox.refused(10).await.expect("refused rows");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, "too_large");
    assert!(
        refused[0].error.contains("larger than the broker accepts"),
        "{}",
        refused[0].error
    );
    assert_eq!(f.outbox.pending().await.expect("pending"), 0);
    assert_eq!(f.rows().await, 1, "the refused row stays for an operator");
    // Put back in line, it is tried again and set aside again.
    assert!(f.outbox.retry_refused(refused[0].seq).await.expect("retry"));
    let tries = || gate.tries.lock().expect("lock")["k2-poison"];
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = f.outbox.refused(10).await.expect("refused").len();
        if tries() >= 2 && refused == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not refused again within 10 s: {} tries, {refused} refused",
            tries()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Set aside, it is not tried a third time (a few idle polls later).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tries(), 2);
    assert_eq!(f.outbox.refused(10).await.expect("refused").len(), 1);
    relay.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_wait_while_the_broker_is_down_and_go_in_order_when_it_is_back() {
    let f = fixture().await;
    gauges();
    let gate = Gate::new(f.broker.clone());
    gate.down.store(true, Ordering::SeqCst);
    let relay = f.outbox.relay(gate.clone(), quick());
    write(&f, "a", &["a1", "a2"]).await;
    write(&f, "b", &["b1"]).await;
    write(&f, "a", &["a3"]).await;
    let tries = || gate.tries.lock().expect("lock").get("a1").copied();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while (depth(&f) != Some(4.0) || tries() < Some(2)) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth(&f), Some(4.0), "the depth gauge shows the backlog");
    assert!(tries() >= Some(2), "the relay kept trying");
    assert_eq!(
        f.outbox.pending().await.expect("pending"),
        4,
        "nothing deleted while unconfirmed"
    );
    assert!(f.broker.peek(EVENTS).is_empty());
    gate.down.store(false, Ordering::SeqCst);
    let events = f.wait_for(EVENTS, 4).await;
    let seen = bodies(&events);
    let a: Vec<&String> = seen.iter().filter(|b| b.starts_with('a')).collect();
    assert_eq!(a, ["a1", "a2", "a3"], "key a in order: {seen:?}");
    assert_eq!(seen.len(), 4);
    assert_eq!(f.rows_become(0).await, 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth(&f) != Some(0.0) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth(&f), Some(0.0), "and its end");
    relay.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_set_aside_and_the_others_go_on() {
    let f = fixture().await;
    write(&f, "k", &["k1"]).await;
    f.admin
        .batch_execute(&format!(
            "INSERT INTO {} (destination, source, message_id, msg_key, unit, payload, headers)
             VALUES ('{EVENTS}', '', 'bad', 'k', '{EVENTS}:k6b', 'x', 'not json')",
            f.schema.table("outbox")
        ))
        .await
        .expect("a broken row");
    write(&f, "k", &["k2"]).await;
    let relay = f.outbox.relay(f.broker.clone(), quick());
    assert_eq!(bodies(&f.wait_for(EVENTS, 2).await), ["k1", "k2"]);
    let refused = f.outbox.refused(10).await.expect("refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, "unreadable");
    assert_eq!(refused[0].message_id, "bad");
    relay.stop().await;
    f.finish().await;
}

/// Waits until a session of `application_name` has tried the relay's lock
/// (its last statement, finished); false if none has after `deadline`.
async fn tried_the_lock(admin: &Client, application_name: &str, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let tried: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1
                 AND state = 'idle' AND query LIKE '%pg_try_advisory_lock%'",
                &[&application_name],
            )
            .await
            .expect("sessions")
            .get(0);
        if tried > 0 {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_leads_and_another_takes_over_when_its_session_ends() {
    let f = fixture().await;
    let app_a = common::unique("relay_a");
    let app_b = common::unique("relay_b");
    let outbox = |app: &str| {
        Outbox::new(pool(app))
            .with_table(&f.schema.table("outbox"))
            .expect("table")
    };
    let a = outbox(&app_a).relay(f.broker.clone(), quick());
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !a.is_leading() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.is_leading(), "the first relay leads");
    let b = outbox(&app_b).relay(f.broker.clone(), quick());
    // The second stands by: once it has tried the lock, and through a few
    // more of its tries (one every 100 ms), it does not lead.
    assert!(
        tried_the_lock(&f.admin, &app_b, Duration::from_secs(10)).await,
        "the second relay tried the lock"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_leading(), "the second stands by");
    assert_eq!(b.terms(), 0, "the second never led");
    assert!(a.is_leading(), "the first relay still leads");

    write(&f, "k", &["k1", "k2"]).await;
    assert_eq!(bodies(&f.wait_for(EVENTS, 2).await), ["k1", "k2"]);

    // End the leader's sessions (as if its process died or its network did).
    f.admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app_a],
        )
        .await
        .expect("terminate");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while (!b.is_leading() || a.is_leading()) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.is_leading(), "the standby took over");
    assert!(!a.is_leading(), "the old leader knows it lost its lock");
    write(&f, "k", &["k3", "k4"]).await;
    assert_eq!(f.rows_become(0).await, 0);
    // The session may have ended between a confirm and its delete: the new
    // leader sends that row again (same id). First copies stay in order.
    let seen = bodies(&f.broker.peek(EVENTS));
    let mut firsts: Vec<&String> = Vec::new();
    for body in &seen {
        if !firsts.contains(&body) {
            firsts.push(body);
        }
    }
    assert_eq!(firsts, ["k1", "k2", "k3", "k4"], "{seen:?}");
    assert!(
        seen.len() <= 6,
        "at most the two rows of the old leader's round again: {seen:?}"
    );
    // Stopped, the leader gives the lock up and the other takes it.
    b.stop().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !a.is_leading() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.is_leading(),
        "the first relay leads again after the second stopped"
    );
    assert_eq!(a.terms(), 2);
    a.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_a_key_waits_for_the_first_to_commit() {
    let f = fixture().await;
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    };
    let mut first = connect().await;
    let tx1 = first.transaction().await.expect("begin");
    let seq1 = f
        .outbox
        .insert(&tx1, EVENTS, &Message::new("k@1").with_key("k"))
        .await
        .expect("insert");
    // Another key and keyless messages do not wait.
    let mut other = connect().await;
    let tx = other.transaction().await.expect("begin");
    f.outbox
        .insert(&tx, EVENTS, &Message::new("j@1").with_key("j"))
        .await
        .expect("another key");
    f.outbox
        .insert(&tx, EVENTS, &Message::new("no key"))
        .await
        .expect("no key");
    tx.commit().await.expect("commit");

    let outbox = f.outbox.clone();
    let second = tokio::spawn(async move {
        let mut client = connect().await;
        let tx = client.transaction().await.expect("begin");
        let seq = outbox
            .insert(&tx, EVENTS, &Message::new("k@2").with_key("k"))
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        seq
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !second.is_finished(),
        "the second writer of k waits for the first"
    );
    tx1.commit().await.expect("commit the first");
    let seq2 = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second writer goes on after the commit")
        .expect("no panic");
    assert!(seq2 > seq1, "within a key, seq order is commit order");
    f.finish().await;
}

/// Writes `bodies` (key `key`) in one transaction on `client`.
async fn write_on(f: &Fixture, client: &mut Client, key: &str, bodies: &[&str]) {
    let tx = client.transaction().await.expect("begin");
    for body in bodies {
        f.outbox
            .insert(
                &tx,
                EVENTS,
                &Message::new(body.to_string()).with_key(key.to_owned()),
            )
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
    f.outbox.committed();
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_late_goes_out_under_steady_load_and_keeps_its_key_in_order() {
    let f = Arc::new(fixture().await);
    // Confirms take 15 ms: the relay runs behind the load, every read is busy.
    #[derive(Clone)]
    struct Slow(MemoryBroker);
    #[async_trait::async_trait]
    impl Publisher for Slow {
        async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
            tokio::time::sleep(Duration::from_millis(15)).await;
            self.0.publish(destination, message).await
        }
    }
    let relay = f.outbox.relay(Slow(f.broker.clone()), quick());
    // Steady load: another key, a row every 5 ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (f, stop) = (Arc::clone(&f), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut client = connect().await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                write_on(&f, &mut client, "load", &[&format!("load-{n}")]).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    // A transaction takes a seq for A, stays open while the relay reads past
    // it, then writes A's second row and commits.
    let mut late = connect().await;
    let tx = late.transaction().await.expect("begin");
    f.outbox
        .insert(&tx, EVENTS, &Message::new("A1").with_key("A"))
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.outbox
        .insert(&tx, EVENTS, &Message::new("A2").with_key("A"))
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    f.outbox.committed();
    // Under the load, both go out, in order (the relay may first publish a
    // backlog of the load's rows, slower on a loaded machine: a long limit,
    // left as soon as A2 is out).
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < until {
        seen = bodies(&f.broker.peek(EVENTS));
        if seen.iter().any(|b| b == "A2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_loading = !load.is_finished();
    stop.store(true, Ordering::SeqCst);
    let written = load.await.expect("load task");
    let a: Vec<&String> = seen.iter().filter(|b| b.starts_with('A')).collect();
    assert!(still_loading, "the load ran the whole time");
    assert_eq!(a, ["A1", "A2"], "A's rows went out under load, in order");
    // Enough rows that the relay's reads were busy with the load (a row
    // every 5 ms plus a commit; a loaded machine writes fewer in the same
    // time, so the bound is loose: the property is the order above).
    assert!(written > 20, "steady load: {written} rows");
    relay.stop().await;
    if let Ok(f) = Arc::try_unwrap(f) {
        f.finish().await;
    }
}

/// The number of scans of the outbox table so far (sequential and index).
async fn scans(f: &Fixture) -> i64 {
    let table = f.schema.table("outbox");
    let (schema, name) = table.split_once('.').expect("schema.table");
    f.admin
        .query_one(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
             WHERE schemaname = $1 AND relname = $2",
            &[&schema, &name],
        )
        .await
        .expect("table statistics")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_broker_keeps_refusing_waits_without_the_relay_reading_in_a_loop() {
    let f = fixture().await;
    let gate = Gate::new(f.broker.clone());
    let nacks = Arc::new(AtomicBool::new(true));
    #[derive(Clone)]
    struct Nacking(Gate, Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Publisher for Nacking {
        async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
            if self.1.load(Ordering::SeqCst) && message.key.as_deref() == Some(&b"n"[..]) {
                return Err(PublishError::Nacked);
            }
            self.0.publish(destination, message).await
        }
    }
    write(&f, "n", &["n1", "n2"]).await;
    write(&f, "ok", &["ok1"]).await;
    // The default settings: 200 ms idle poll, backoff 100 ms … 5 s.
    let relay = f.outbox.relay(
        Nacking(gate.clone(), Arc::clone(&nacks)),
        RelayConfig::default(),
    );
    assert_eq!(
        bodies(&f.wait_for(EVENTS, 1).await),
        ["ok1"],
        "other keys go on"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scans(&f).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = scans(&f).await - before;
    // Statistics reach the view with a delay; a loop would be thousands.
    assert!(during < 200, "{during} scans in 2 s while one key waits");
    nacks.store(false, Ordering::SeqCst);
    let seen = bodies(&f.wait_for(EVENTS, 3).await);
    assert_eq!(
        seen,
        ["ok1", "n1", "n2"],
        "the key goes on in order once accepted"
    );
    relay.stop().await;
    f.finish().await;
}

/// Writes an effect, then publishes the order to `to` (key `key`),
/// ignoring a failed publish: best effort.
#[derive(Clone)]
struct Careless {
    effects: String,
    runs: Arc<AtomicU32>,
    to: &'static str,
    key: Option<&'static str>,
}

impl Careless {
    fn new(f: &Fixture, to: &'static str, key: Option<&'static str>) -> Self {
        Careless {
            effects: f.effects.clone(),
            runs: Arc::default(),
            to,
            key,
        }
    }

    /// Its stack: up to 3 retries from `backoff` (twice that at most), through `inbox`.
    fn stack(&self, f: &Fixture, inbox: &Inbox, backoff: Duration) -> Stack {
        StackBuilder::<String>::new(Arc::new(f.broker.dead_letter_sink()))
            .retry(RetryPolicy::retries(3).backoff(backoff, backoff * 2))
            .around_attempt(inbox.layer())
            .build(self.clone())
    }
}

impl Handle<String> for Careless {
    type Error = HandlerError;

    async fn handle(&self, order: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        write_effect(&self.effects, &ctx).await?;
        let mut event = Message::new(order);
        if let Some(key) = self.key {
            event = event.with_key(key);
        }
        if let Err(error) = ctx.publish(self.to, event).await {
            eprintln!("ignored: {error}");
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_the_handler_ignores_rolls_the_attempt_back_instead_of_losing_it() {
    let f = fixture().await;
    // Rows for "forbidden" violate a constraint: the insert aborts the transaction.
    f.admin
        .batch_execute(&format!(
            "ALTER TABLE {} ADD CONSTRAINT no_forbidden CHECK (destination <> 'forbidden')",
            f.schema.table("outbox")
        ))
        .await
        .expect("constraint");
    let handler = Careless::new(&f, "forbidden", None);
    publish_orders(&f.broker, &["c1".to_owned()]);
    let stack = handler.stack(&f, &f.inbox, Duration::from_millis(10));
    let summary = f.drain(stack).await;
    // A constraint cannot pass on a retry: dead-lettered at once, and its
    // effect was never committed without its message.
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.effects().await,
        0,
        "nothing committed without its publish"
    );
    assert_eq!(f.rows().await, 0);
    assert_eq!(f.broker.stats(&dlq_name(QUEUE)).published, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_times_out_on_its_keys_lock_is_never_committed_without_its_row() {
    let f = fixture().await;
    // The outbox gives a key's lock 300 ms; another transaction holds the
    // lock of key "hot" while the first attempt publishes, until a second
    // attempt has started (so the first one's wait timed out), or for 30 s.
    let outbox = f
        .outbox
        .clone()
        .statement_timeout(Duration::from_millis(300));
    let inbox = f.inbox.clone().outbox(&outbox);
    let handler = Careless::new(&f, EVENTS, Some("hot"));
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let holder = {
        let outbox = f.outbox.clone();
        let runs = Arc::clone(&handler.runs);
        tokio::spawn(async move {
            let mut client = connect().await;
            let tx = client.transaction().await.expect("begin");
            outbox
                .insert(&tx, EVENTS, &Message::new("holder").with_key("hot"))
                .await
                .expect("the holder's row");
            let _ = locked.send(());
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            while runs.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.commit().await.expect("commit the holder");
        })
    };
    is_locked.await.expect("the holder has the lock");
    publish_orders(&f.broker, &["t1".to_owned()]);
    let stack = handler.stack(&f, &inbox, Duration::from_millis(200));
    let summary = f.drain(stack).await;
    holder.await.expect("holder");
    assert_eq!(summary.handled, 1, "{summary:?}");
    assert!(
        handler.runs.load(Ordering::SeqCst) >= 2,
        "the timed-out attempt was retried"
    );
    assert_eq!(f.effects().await, 1, "one committed effect");
    assert_eq!(
        f.rows().await,
        2,
        "the holder's row and the retry's: none lost"
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_a_key_are_relayed_in_their_commit_order() {
    let f = Arc::new(fixture().await);
    let relay = f.outbox.relay(f.broker.clone(), quick());
    // Per key, the order in which commits returned to their writers: the
    // key's lock makes a second writer wait for the first one's commit.
    let committed: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (f, committed) = (Arc::clone(&f), Arc::clone(&committed));
            tokio::spawn(async move {
                let mut client = connect().await;
                for i in 0..8 {
                    let key = format!("k{}", (w + i) % 3);
                    let body = format!("{key}/w{w}/{i}");
                    let tx = client.transaction().await.expect("begin");
                    f.outbox
                        .insert(
                            &tx,
                            EVENTS,
                            &Message::new(body.clone()).with_key(key.clone()),
                        )
                        .await
                        .expect("insert");
                    // Hold the transaction open a while (20–35 ms): the next
                    // writer of the key commits at least that long after it,
                    // well past this writer seeing its own commit return.
                    let hold = 20 + (w * 7 + i * 3) % 16;
                    tokio::time::sleep(Duration::from_millis(hold as u64)).await;
                    tx.commit().await.expect("commit");
                    committed
                        .lock()
                        .expect("lock")
                        .entry(key)
                        .or_default()
                        .push(body);
                    f.outbox.committed();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let events = f.wait_for(EVENTS, 64).await;
    assert_eq!(f.rows_become(0).await, 0);
    let seen = bodies(&events);
    assert_eq!(seen.len(), 64, "{seen:?}");
    let committed = committed.lock().expect("lock").clone();
    for (key, order) in &committed {
        let relayed: Vec<&String> = seen
            .iter()
            .filter(|b| b.starts_with(&format!("{key}/")))
            .collect();
        let order: Vec<&String> = order.iter().collect();
        assert_eq!(relayed, order, "key {key}: relayed in commit order");
    }
    relay.stop().await;
    if let Ok(f) = Arc::try_unwrap(f) {
        f.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_behind_a_large_block_of_refused_keys_are_relayed() {
    let f = fixture().await;
    // 10,000 rows for a destination that stays full (a key each), written
    // straight into the table, then 20 healthy rows of one key.
    f.admin
        .batch_execute(&format!(
            "INSERT INTO {} (destination, source, message_id, msg_key, unit, payload, headers)
             SELECT 'full', '', 'full-' || i, convert_to('f' || i, 'UTF8'),
                    'full:k' || encode(convert_to('f' || i, 'UTF8'), 'hex'), 'x', '[]'
             FROM generate_series(1, 10000) AS i",
            f.schema.table("outbox")
        ))
        .await
        .expect("the refused block");
    let healthy: Vec<String> = (0..20).map(|i| format!("ok-{i}")).collect();
    let bodies_ok: Vec<&str> = healthy.iter().map(String::as_str).collect();
    write(&f, "ok", &bodies_ok).await;
    #[derive(Clone)]
    struct FullFor(MemoryBroker);
    #[async_trait::async_trait]
    impl Publisher for FullFor {
        async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
            if destination == "full" {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Err(PublishError::Full(destination.to_owned()));
            }
            self.0.publish(destination, message).await
        }
    }
    let relay = f
        .outbox
        .relay(FullFor(f.broker.clone()), RelayConfig::default());
    let started = std::time::Instant::now();
    let seen = bodies(&f.wait_for(EVENTS, 20).await);
    assert_eq!(seen, bodies_ok, "after {:?}", started.elapsed());
    relay.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_keys_lock_is_bounded_on_the_server_and_the_setting_put_back() {
    let f = fixture().await;
    let outbox = f
        .outbox
        .clone()
        .statement_timeout(Duration::from_millis(300));
    let mut holder = connect().await;
    let held = holder.transaction().await.expect("begin");
    outbox
        .insert(&held, EVENTS, &Message::new("first").with_key("k"))
        .await
        .expect("the first writer");
    let mut other = connect().await;
    let tx = other.transaction().await.expect("begin");
    tx.batch_execute("SET LOCAL lock_timeout = '7s'")
        .await
        .expect("the caller's own setting");
    let started = std::time::Instant::now();
    let error = outbox
        .insert(&tx, EVENTS, &Message::new("second").with_key("k"))
        .await
        .expect_err("the key is held");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match &error {
        backstop_postgres::PostgresError::Query { source, .. } => assert_eq!(
            source.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "the server gave up the wait: {error}"
        ),
        other => panic!("expected the server's lock timeout, got {other}"),
    }
    drop(tx);
    // Free, the lock is taken and the caller's setting is back afterwards.
    held.commit().await.expect("commit");
    let tx = other.transaction().await.expect("begin");
    tx.batch_execute("SET LOCAL lock_timeout = '7s'")
        .await
        .expect("the caller's own setting");
    outbox
        .insert(&tx, EVENTS, &Message::new("second").with_key("k"))
        .await
        .expect("the key is free");
    let setting: String = tx
        .query_one("SELECT current_setting('lock_timeout')", &[])
        .await
        .expect("setting")
        .get(0);
    assert_eq!(setting, "7s");
    tx.commit().await.expect("commit");
    f.finish().await;
}
