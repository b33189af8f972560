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
use backstop::{
    Context, Handle, HandlerError, Message, PublishError, Publisher, RetryPolicy, Runner, Stack,
    StackBuilder, Summary,
};
use backstop_postgres::outbox::RelayConfig;
use backstop_postgres::{Inbox, InboxTx, Outbox, PgConfig};
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

impl Handle<String> for Placer {
    type Error = HandlerError;

    async fn handle(&self, order: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let tx = InboxTx::from_context(&ctx)?;
        let sql = format!("INSERT INTO {} (message_id) VALUES ($1)", self.effects);
        tx.execute(&sql, &[&ctx.message_id()]).await?;
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
    assert_eq!(o3, ["in-o3:out:0", "in-o3:out:1"]);
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
    let (mut client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
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
    // Put back in line, it is tried again (and refused again).
    assert!(f.outbox.retry_refused(refused[0].seq).await.expect("retry"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gate.tries.lock().expect("lock")["k2-poison"], 2);
    assert_eq!(f.outbox.refused(10).await.expect("refused").len(), 1);
    relay.stop().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_wait_while_the_broker_is_down_and_go_in_order_when_it_is_back() {
    let f = fixture().await;
    let gate = Gate::new(f.broker.clone());
    gate.down.store(true, Ordering::SeqCst);
    let relay = f.outbox.relay(gate.clone(), quick());
    write(&f, "a", &["a1", "a2"]).await;
    write(&f, "b", &["b1"]).await;
    write(&f, "a", &["a3"]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        gate.tries.lock().expect("lock")["a1"] >= 2,
        "the relay kept trying"
    );
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = outbox(&app_b).relay(f.broker.clone(), quick());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.is_leading(), "the first relay leads");
    assert!(!b.is_leading(), "the second stands by");

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
    let seen = bodies(&f.wait_for(EVENTS, 4).await);
    assert_eq!(seen, ["k1", "k2", "k3", "k4"]);
    assert_eq!(f.rows_become(0).await, 0);
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
