//! A broker restart mid-run: the worker recovers by itself. In a test binary
//! of its own, so no other Kafka test runs while the broker is down.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Context, HandlerError, StackBuilder, handler_fn};
use common::*;

fn restart_broker() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/services/kafka.sh"
    );
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg("restart")
        .status()
        .expect("run the Kafka service script");
    assert!(status.success(), "kafka.sh restart failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_recovers_from_a_broker_restart() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "restart", 2).await;
    let publisher = kafka.publisher().unwrap();
    let before = messages("before", 400, 20);
    publish_all(&publisher, &topic, &before).await;

    let handled: Shared<BTreeSet<String>> = shared();
    let h = Arc::clone(&handled);
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .nack_delay(Duration::from_millis(200))
        .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let handled = Arc::clone(&h);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                handled.lock().unwrap().insert(ctx.message_id().to_owned());
                Ok::<_, HandlerError>(())
            }
        }));
    let worker = run(kafka.source(&[&topic], 4).unwrap(), stack, 4);
    assert!(
        eventually(Duration::from_secs(30), || handled.lock().unwrap().len()
            >= 50)
        .await
    );

    let started = Instant::now();
    tokio::task::spawn_blocking(restart_broker).await.unwrap();
    let restart_took = started.elapsed();

    // Published after the restart, through the same producer.
    let after = messages("after", 100, 20);
    publish_all(&publisher, &topic, &after).await;
    let mut expected = ids(&before);
    expected.extend(ids(&after));
    let done = eventually(Duration::from_secs(90), || {
        handled.lock().unwrap().is_superset(&expected)
    })
    .await;
    let summary = worker.stop().await;
    let missing: Vec<_> = expected
        .difference(&handled.lock().unwrap())
        .take(10)
        .cloned()
        .collect();
    assert!(
        done,
        "missing after a restart that took {restart_took:?}: {missing:?}...; {summary}"
    );
}
