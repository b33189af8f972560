//! A dead letter the producer can never write (larger than its
//! `message.max.bytes`): the worker stops consuming, reports not ready with
//! the reason, and the group's committed offset never passes the record.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::publish::Publisher;
use backstop::{Context, HandlerError, Message, RetryPolicy, StackBuilder, handler_fn};
use common::{kafka, topic, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_too_large_for_the_producer_halts_the_worker_and_keeps_the_offset() {
    let group = unique("halt-g");
    let producer_side = kafka(&group);
    let src = topic(&producer_side, "halt", 1).await;
    // The worker's producer takes less than the source topic accepts.
    let worker = kafka(&group).configure(|c| c.max_message_bytes = 100_000);
    let publisher = producer_side.publisher().unwrap();
    let poison = format!("\"{}\"", "x".repeat(200_000));
    publisher
        .publish(&src, &Message::new(poison).with_message_id("poison"))
        .await
        .unwrap();
    publisher
        .publish(&src, &Message::new("\"ok\"").with_message_id("next"))
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let handler = handler_fn(move |body: String, _ctx: Context| {
        r.fetch_add(1, Ordering::SeqCst);
        async move {
            if body.len() > 1000 {
                Err(HandlerError::permanent("too long to ship"))
            } else {
                Ok(())
            }
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(worker.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(2).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .nack_delay(Duration::from_millis(200))
        .build(handler);
    // The start-up check would refuse this producer limit at once; opt out
    // of it to prove the runtime path.
    let source = worker
        .source(&[src.as_str()], 1)
        .unwrap()
        .skip_destination_check();
    let shutdown = backstop::CancellationToken::new();
    let runner = backstop::Runner::new(source, stack).with_shutdown(shutdown.clone());
    let readiness = runner.readiness();
    let run = tokio::spawn(runner.run());
    let mut halted = false;
    for _ in 0..300 {
        if readiness.get().is_err_and(|why| why.starts_with("halted")) {
            halted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        halted,
        "the worker reports not ready: {:?}",
        readiness.get()
    );
    let why = readiness.get().unwrap_err();
    assert!(why.contains("larger than the broker accepts"), "{why}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!run.is_finished(), "the worker does not exit by itself");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the poison ran once, no loop"
    );
    shutdown.cancel();
    let Err(backstop::runner::RunError::Halted { summary, .. }) = run.await.unwrap() else {
        panic!("a halted run reports it");
    };
    assert_eq!(
        summary.handled, 0,
        "nothing behind the poison ran: {summary}"
    );
    assert_eq!(summary.dead_lettered, 0, "{summary}");
    let committed = producer_side.committed_offsets(&src).await.unwrap();
    assert!(
        committed.get(&0).copied().flatten().unwrap_or(0) <= 0,
        "the committed offset never passes the poison: {committed:?}"
    );
}
