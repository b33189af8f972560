//! The transactional inbox: effects and the inbox row commit together or
//! not at all, and a committed message is never handled again.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::idempotency::Key;
use backstop::memory::{MemoryBroker, dlq_name};
use backstop::runner::Source;
use backstop::{
    Context, Handle, HandlerError, KeySource, Message, RetryPolicy, Runner, Stack, StackBuilder,
    Summary,
};
use backstop_postgres::{Inbox, InboxError, InboxTx, PgConfig};
use tokio::sync::Notify;
use tokio_postgres::Client;
use tower::{Service, ServiceExt};

const QUEUE: &str = "inbox-test";

struct Fixture {
    admin: Client,
    schema: common::Schema,
    app: String,
    inbox: Inbox,
    effects: String,
    broker: MemoryBroker,
}

async fn fixture() -> Fixture {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let app = common::unique("inbox_test");
    let pool = PgConfig::new(common::url())
        .application_name(&app)
        .max_connections(4)
        .connect_timeout(Duration::from_secs(10))
        .pool()
        .unwrap();
    let inbox = Inbox::new(pool)
        .with_table(&schema.table("inbox"))
        .unwrap()
        .consumer("test");
    inbox.migrate().await.unwrap();
    let effects = schema.table("effects");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (message_id text NOT NULL, body text NOT NULL)"
        ))
        .await
        .unwrap();
    Fixture {
        admin,
        schema,
        app,
        inbox,
        effects,
        broker: MemoryBroker::new(),
    }
}

impl Fixture {
    fn publish(&self, id: &str) {
        self.broker
            .publish_now(
                QUEUE,
                Message::new(format!("body of {id}")).with_message_id(id),
            )
            .unwrap();
    }

    fn stack(&self, writer: Writer) -> Stack {
        self.stack_with(self.inbox.clone(), writer)
    }

    fn stack_with(&self, inbox: Inbox, writer: Writer) -> Stack {
        StackBuilder::<String>::new(Arc::new(self.broker.dead_letter_sink()))
            .retry(
                RetryPolicy::retries(3)
                    .backoff(Duration::from_millis(10), Duration::from_millis(50)),
            )
            .nack_delay(Duration::from_millis(50))
            .around_attempt(inbox.layer())
            .build(writer)
    }

    async fn drain(&self, stack: Stack) -> Summary {
        Runner::new(self.broker.consume(QUEUE, 4).until_drained(), stack)
            .concurrency(2)
            .run()
            .await
            .unwrap()
    }

    async fn effects(&self) -> i64 {
        common::count(&self.admin, &self.effects).await
    }

    async fn effects_of(&self, id: &str) -> i64 {
        common::count(
            &self.admin,
            &format!("{} WHERE message_id = '{id}'", self.effects),
        )
        .await
    }

    async fn committed(&self, id: &str) -> bool {
        self.inbox
            .contains(&self.inbox.keyspace(QUEUE, None), &Key::new(id))
            .await
            .unwrap()
    }

    async fn no_open_transaction_left(&self) -> bool {
        common::no_connection_left_in_transaction(&self.admin, &self.app, Duration::from_secs(5))
            .await
    }

    async fn finish(self) {
        self.schema.drop_all(&self.admin).await;
    }
}

/// A handler that writes one effect row through the inbox transaction,
/// then behaves as told.
#[derive(Clone, Default)]
struct Writer {
    effects: String,
    runs: Arc<AtomicU32>,
    fail_first_runs: u32,
    hang_on_first_run: Option<Arc<Notify>>,
    panics: bool,
    pause: Option<Duration>,
    leak: Option<Arc<Mutex<Option<InboxTx>>>>,
}

impl Writer {
    fn new(f: &Fixture) -> Self {
        Writer {
            effects: f.effects.clone(),
            ..Writer::default()
        }
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

impl Handle<String> for Writer {
    type Error = HandlerError;

    async fn handle(&self, body: String, ctx: Context) -> Result<(), HandlerError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let tx = InboxTx::from_context(&ctx)?;
        let sql = format!(
            "INSERT INTO {} (message_id, body) VALUES ($1, $2)",
            self.effects
        );
        tx.execute(&sql, &[&ctx.message_id(), &body]).await?;
        if let Some(slot) = &self.leak {
            *slot.lock().unwrap() = Some(tx.clone());
        }
        if let Some(pause) = self.pause {
            tokio::time::sleep(pause).await;
        }
        if let Some(hung) = &self.hang_on_first_run
            && run == 1
        {
            hung.notify_one();
            std::future::pending::<()>().await;
        }
        assert!(!self.panics, "handler bug after its write");
        if run <= self.fail_first_runs {
            return Err(HandlerError::transient("downstream flaked after the write"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_commits_the_effect_and_the_inbox_row_together() {
    let f = fixture().await;
    let writer = Writer::new(&f);
    f.publish("m-1");
    let summary = f.drain(f.stack(writer.clone())).await;
    assert_eq!(summary.handled, 1);
    assert_eq!(writer.runs(), 1);
    assert_eq!(f.effects_of("m-1").await, 1);
    assert!(f.committed("m-1").await);
    assert!(f.no_open_transaction_left().await);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_rolls_back_and_the_retry_commits_once() {
    let f = fixture().await;
    let writer = Writer {
        fail_first_runs: 1,
        ..Writer::new(&f)
    };
    f.publish("m-flaky");
    let summary = f.drain(f.stack(writer.clone())).await;
    assert_eq!(summary.handled, 1);
    assert_eq!(writer.runs(), 2, "one failed run, one retry");
    assert_eq!(
        f.effects_of("m-flaky").await,
        1,
        "the failed run's write was rolled back"
    );
    assert!(f.committed("m-flaky").await);
    assert_eq!(f.broker.stats(&dlq_name(QUEUE)).published, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_committed_message_skips_the_handler() {
    let f = fixture().await;
    let writer = Writer::new(&f);
    f.publish("m-1");
    f.drain(f.stack(writer.clone())).await;
    f.publish("m-1");
    f.publish("m-1");
    let summary = f.drain(f.stack(writer.clone())).await;
    assert_eq!(summary.handled, 2, "the copies are acked");
    assert_eq!(
        writer.runs(),
        1,
        "the handler ran for the first delivery only"
    );
    assert_eq!(f.effects().await, 1);
    assert!(f.no_open_transaction_left().await);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_commit_leaves_nothing_and_the_redelivery_runs_once() {
    let f = fixture().await;
    let hung = Arc::new(Notify::new());
    let writer = Writer {
        hang_on_first_run: Some(Arc::clone(&hung)),
        ..Writer::new(&f)
    };
    f.publish("m-crash");
    let mut stack = f.stack(writer.clone());
    let mut source = f.broker.consume(QUEUE, 1);
    let delivery = source.next().await.unwrap().unwrap();
    let task = tokio::spawn(async move { stack.ready().await?.call(delivery).await });
    tokio::time::timeout(Duration::from_secs(10), hung.notified())
        .await
        .expect("the handler wrote and hung");
    task.abort();
    assert!(
        task.await.unwrap_err().is_cancelled(),
        "the worker died mid-handler"
    );

    assert_eq!(f.effects().await, 0);
    assert!(!f.committed("m-crash").await);
    assert!(
        f.no_open_transaction_left().await,
        "the interrupted transaction's connection was closed"
    );
    assert_eq!(
        f.broker.stats(QUEUE).ready,
        1,
        "the dropped delivery went back to the queue"
    );
    drop(source);

    let summary = f.drain(f.stack(writer.clone())).await;
    assert_eq!(summary.handled, 1);
    assert_eq!(writer.runs(), 2, "the redelivery ran the handler once more");
    assert_eq!(f.effects_of("m-crash").await, 1);
    assert!(f.committed("m-crash").await);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_and_never_leaves_a_dirty_connection_in_the_pool() {
    let f = fixture().await;
    let panicking = Writer {
        panics: true,
        ..Writer::new(&f)
    };
    f.publish("m-panic");
    let summary = f.drain(f.stack(panicking)).await;
    assert_eq!(summary.dead_lettered, 1, "a panic is a permanent failure");
    assert_eq!(f.effects().await, 0);
    assert!(!f.committed("m-panic").await);
    assert!(f.no_open_transaction_left().await);

    // The pool's next connection starts clean: only the new write commits.
    let writer = Writer::new(&f);
    for i in 0..4 {
        f.publish(&format!("m-after-{i}"));
    }
    let summary = f.drain(f.stack(writer)).await;
    assert_eq!(summary.handled, 4);
    assert_eq!(f.effects().await, 4);
    assert_eq!(f.effects_of("m-panic").await, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_message_commit_once() {
    let f = fixture().await;
    let writer = Writer {
        pause: Some(Duration::from_millis(300)),
        ..Writer::new(&f)
    };
    f.publish("m-twice");
    f.publish("m-twice");
    let summary = f.drain(f.stack(writer.clone())).await;
    assert_eq!(summary.handled, 2, "both copies are acked");
    assert_eq!(
        writer.runs(),
        1,
        "the second copy waited for the first and was skipped"
    );
    assert_eq!(f.effects().await, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kept_past_the_attempt_is_refused() {
    let f = fixture().await;
    let slot = Arc::new(Mutex::new(None));
    let writer = Writer {
        leak: Some(Arc::clone(&slot)),
        ..Writer::new(&f)
    };
    f.publish("m-leak");
    f.drain(f.stack(writer)).await;
    let tx = slot
        .lock()
        .unwrap()
        .take()
        .expect("the handler kept its handle");
    assert_eq!(tx.key(), Some(&Key::new("m-leak")));
    assert!(matches!(
        tx.execute("SELECT 1", &[]).await,
        Err(InboxError::Finished)
    ));
    assert_eq!(f.effects().await, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_key_run_in_a_transaction_without_deduplication() {
    let f = fixture().await;
    let inbox = f
        .inbox
        .clone()
        .keyed_by(KeySource::Header("x-order".into()));
    let writer = Writer::new(&f);
    f.publish("m-nokey");
    f.publish("m-nokey");
    for _ in 0..2 {
        f.broker
            .publish_now(
                QUEUE,
                Message::new("keyed")
                    .with_message_id("m-keyed")
                    .with_header("x-order", "o-1"),
            )
            .unwrap();
    }
    let summary = f.drain(f.stack_with(inbox.clone(), writer.clone())).await;
    assert_eq!(summary.handled, 4);
    assert_eq!(f.effects_of("m-nokey").await, 2, "no key: both copies ran");
    assert_eq!(
        f.effects_of("m-keyed").await,
        1,
        "keyed by the header: once"
    );
    assert!(
        inbox
            .contains(&inbox.keyspace(QUEUE, None), &Key::new("o-1"))
            .await
            .unwrap()
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_without_the_inbox_layer_fails_permanently() {
    let broker = MemoryBroker::new();
    broker.publish_now(QUEUE, Message::new("x")).unwrap();
    let handler = backstop::handler_fn(|_: String, ctx: Context| async move {
        InboxTx::from_context(&ctx)?;
        Ok::<(), HandlerError>(())
    });
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink())).build(handler);
    let summary = Runner::new(broker.consume(QUEUE, 1).until_drained(), stack)
        .run()
        .await
        .unwrap();
    assert_eq!(summary.dead_lettered, 1);
}

/// The store of worker A: its renewals never get through (a starved
/// renewer, a network partition), so its lease runs out while it works.
struct RenewalsStall(backstop_postgres::PostgresStore);

#[async_trait::async_trait]
impl backstop::idempotency::Store for RenewalsStall {
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<backstop::idempotency::Claim, backstop::error::StoreError> {
        self.0.claim(key, owner, lease, replay).await
    }
    async fn renew(
        &self,
        _: &Key,
        _: backstop::idempotency::Fence,
        _: Duration,
    ) -> Result<bool, backstop::error::StoreError> {
        std::future::pending().await
    }
    async fn complete(
        &self,
        key: &Key,
        fence: backstop::idempotency::Fence,
    ) -> Result<bool, backstop::error::StoreError> {
        self.0.complete(key, fence).await
    }
    async fn mark_dead_lettered(
        &self,
        key: &Key,
        fence: backstop::idempotency::Fence,
    ) -> Result<bool, backstop::error::StoreError> {
        self.0.mark_dead_lettered(key, fence).await
    }
    async fn release(
        &self,
        key: &Key,
        fence: backstop::idempotency::Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), backstop::error::StoreError> {
        self.0.release(key, fence, failed_runs).await
    }
}

/// Two workers and a handler that outlives its lease, with the inbox fenced
/// by the store in the same database: worker A's lease runs out mid-run and
/// B takes the message over; A's commit is refused by the fence (rolled
/// back, deferred, then a duplicate), B's commits: one effect, B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_inbox_refuses_the_commit_of_a_run_whose_lease_was_lost() {
    let f = fixture().await;
    let store = backstop_postgres::PostgresStore::new(f.inbox.pool().clone())
        .with_table(&f.schema.table("dedup"))
        .unwrap();
    store.migrate().await.unwrap();
    let lease = Duration::from_millis(400);
    let inbox = f.inbox.clone().fenced_by(&store);
    let worker = |store: Arc<dyn backstop::idempotency::Store>, writer: Writer| {
        StackBuilder::<String>::new(Arc::new(f.broker.dead_letter_sink()))
            .idempotency_with(
                store,
                backstop::idempotency::Config {
                    lease,
                    ..backstop::idempotency::Config::keyed_by(KeySource::MessageId)
                },
            )
            .nack_delay(Duration::from_millis(50))
            .around_attempt(inbox.layer())
            .build(writer)
    };
    let slow = Writer {
        pause: Some(Duration::from_millis(2500)),
        ..Writer::new(&f)
    };
    let fast = Writer::new(&f);
    // One queue (one consumer, one keyspace): A takes the first copy and,
    // busy with it at concurrency 1, leaves the second to B.
    let queue = "inbox-fenced";
    let publish = |from: &str| {
        f.broker
            .publish_now(
                queue,
                Message::new(format!("from {from}")).with_message_id("m-fenced"),
            )
            .unwrap();
    };
    publish("inbox-a");
    let a = tokio::spawn(
        Runner::new(
            f.broker.consume(queue, 1).until_drained(),
            worker(Arc::new(RenewalsStall(store.clone())), slow.clone()),
        )
        .concurrency(1)
        .run(),
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(slow.runs(), 1, "A is still in its run");
    publish("inbox-b");
    let b = Runner::new(
        f.broker.consume(queue, 1).until_drained(),
        worker(Arc::new(store.clone()), fast.clone()),
    )
    .run()
    .await
    .unwrap();
    let a = a.await.unwrap().unwrap();
    assert_eq!(b.handled, 1, "B took over and committed");
    assert_eq!(fast.runs(), 1);
    assert_eq!(a.handled, 0, "A's commit was refused: {a}");
    let rest = Runner::new(
        f.broker.consume(queue, 1).until_drained(),
        worker(Arc::new(store.clone()), fast.clone()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(
        a.duplicates + b.duplicates + rest.duplicates,
        1,
        "A's redelivery is a duplicate: {a} / {b} / {rest}"
    );
    assert_eq!(fast.runs(), 1);
    assert_eq!(f.effects().await, 1, "one effect");
    let body: String = f
        .admin
        .query_one(&format!("SELECT body FROM {}", f.effects), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        body, "from inbox-b",
        "the newer run's effect is the one committed"
    );
    assert!(f.no_open_transaction_left().await);
    f.finish().await;
}

/// A table filled by the first release (rows under the consumer name as
/// given) is refused without a choice; migrating, a redelivery of a message
/// committed under the old name is skipped and gets its new row, and a new
/// message writes its row under both names, so a worker of the first
/// release skips it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_of_the_first_release_is_matched_during_the_migration() {
    use backstop::idempotency::{KeyLayout, LayoutError};
    let f = fixture().await;
    let table = f.schema.table("inbox_old");
    let inbox = |layout| {
        Inbox::new(f.inbox.pool().clone())
            .with_table(&table)
            .unwrap()
            .consumer("test")
            .layout(layout)
    };
    let old = inbox(KeyLayout::Legacy);
    old.migrate().await.unwrap();
    let writer = Writer::new(&f);
    f.publish("m-old");
    f.drain(f.stack_with(old.clone(), writer.clone())).await;
    assert_eq!(
        common::count(
            &f.admin,
            &format!("{table} WHERE consumer = 'test' AND key = 'm-old'")
        )
        .await,
        1,
        "the first release's row: the consumer name as given"
    );
    assert!(matches!(
        inbox(KeyLayout::Keyspaced).migrate().await,
        Err(backstop_postgres::PostgresError::Layout(
            LayoutError::Unmarked { .. }
        ))
    ));
    let new = inbox(KeyLayout::Migrate {
        window: Duration::from_secs(3600),
    });
    new.migrate().await.unwrap();
    f.publish("m-old");
    f.publish("m-new");
    let summary = f.drain(f.stack_with(new.clone(), writer.clone())).await;
    assert_eq!(summary.handled, 2, "{summary}");
    assert_eq!(f.effects_of("m-old").await, 1, "not run again");
    assert_eq!(f.effects_of("m-new").await, 1);
    let keyspace = new.keyspace(QUEUE, None);
    for id in ["m-old", "m-new"] {
        assert!(
            new.contains(&keyspace, &Key::new(id)).await.unwrap(),
            "{id}: its new row"
        );
    }
    f.publish("m-new");
    f.drain(f.stack_with(old, writer.clone())).await;
    assert_eq!(
        f.effects_of("m-new").await,
        1,
        "a worker of the first release skips it"
    );
    assert_eq!(writer.runs(), 2);
    f.finish().await;
}
