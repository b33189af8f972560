//! PostgreSQL stops mid-run: messages are deferred (nacked, redelivered),
//! never dead-lettered, and each runs exactly once after it is back.
//!
//! This binary stops the shared PostgreSQL server, so it holds the only
//! test of its binary; cargo runs test binaries one after another, so the
//! crate's other tests never see the outage.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::memory::{MemoryBroker, dlq_name};
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, Runner, StackBuilder, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};

fn service(action: &str) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/postgres.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .expect("run the postgres service script");
    assert!(status.success(), "postgres.sh {action} failed: {status}");
}

/// Starts PostgreSQL again if the test fails while it is stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        service("start");
    }
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !done() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_defers_messages_and_each_runs_once_after_restart() {
    let queue = "outage";
    let broker = MemoryBroker::new();
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let pool = PgConfig::new(common::url())
        .max_connections(4)
        .connect_timeout(Duration::from_secs(2))
        .wait_timeout(Duration::from_secs(2))
        .pool()
        .unwrap();
    let store = PostgresStore::new(pool)
        .with_table(&schema.table("dedup"))
        .unwrap()
        .operation_timeout(Duration::from_secs(3));
    store.migrate().await.unwrap();

    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let handler = handler_fn(move |_body: String, ctx: Context| {
        let seen = Arc::clone(&seen);
        async move {
            *seen
                .lock()
                .unwrap()
                .entry(ctx.message_id().to_owned())
                .or_default() += 1;
            Ok::<(), HandlerError>(())
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(Arc::new(store), KeySource::MessageId)
        .nack_delay(Duration::from_millis(200))
        .build(handler);
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(broker.consume(queue, 8), stack)
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    let publish = |prefix: &str| {
        for i in 0..10 {
            broker
                .publish_now(
                    queue,
                    Message::new(format!("body {i}")).with_message_id(format!("{prefix}-{i}")),
                )
                .unwrap();
        }
    };
    let acked = || broker.stats(queue).acked;

    publish("before");
    wait_for("the first 10 acks", Duration::from_secs(30), || {
        acked() == 10
    })
    .await;

    let restart = RestartOnDrop;
    drop(admin);
    tokio::task::spawn_blocking(|| service("stop"))
        .await
        .unwrap();
    publish("during");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = broker.stats(queue);
    assert_eq!(during.acked, 10, "nothing is acked while the store is down");
    assert!(
        during.redelivered >= 10,
        "the new messages were nacked and redelivered: {during:?}"
    );
    assert_eq!(
        broker.stats(&dlq_name(queue)).published,
        0,
        "nothing is dead-lettered"
    );
    assert!(
        handled
            .lock()
            .unwrap()
            .keys()
            .all(|id| id.starts_with("before")),
        "no handler ran without the store"
    );

    tokio::task::spawn_blocking(|| service("start"))
        .await
        .unwrap();
    std::mem::forget(restart);
    wait_for(
        "all 20 acks after the restart",
        Duration::from_secs(60),
        || acked() == 20,
    )
    .await;

    // Copies of every message are duplicates now (the store is durable).
    publish("before");
    publish("during");
    wait_for("the copies' acks", Duration::from_secs(30), || {
        acked() == 40
    })
    .await;
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();

    {
        let handled = handled.lock().unwrap();
        assert_eq!(handled.len(), 20, "{handled:?}");
        assert!(
            handled.values().all(|n| *n == 1),
            "each message ran exactly once: {handled:?}"
        );
    }
    assert_eq!(broker.stats(&dlq_name(queue)).published, 0);
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(summary.handled, 20);
    assert_eq!(summary.duplicates, 20);
    assert!(summary.nacked >= 10, "{summary}");
    schema.drop_all(&common::admin().await).await;
}
