//! Letters that the broker cannot take: size limits checked before sending,
//! publishes that survive another one's channel close, a worker that stops
//! consuming instead of looping over a letter that can never be written, and
//! a redelivery after a failed DLQ write that retries only the write.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::publish::{PublishError, Publisher};
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, RetryPolicy, Runner,
    StackBuilder, handler_fn, wire,
};
use backstop_rabbitmq::lapin::options::{BasicGetOptions, QueueDeleteOptions};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::{ConnectOptions, RabbitMq, url_from_env};
use common::{
    classic_queue, cleanup, count_reaches, drain, full_queue, halted, quorum, rabbit, unique,
};
use futures::StreamExt;

async fn delete(rabbit: &RabbitMq, queue: &str) {
    let channel = rabbit.channel().await.unwrap();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_larger_than_frame_max_fail_as_too_large_and_the_connection_lives() {
    let rabbit = rabbit().await;
    let queue = classic_queue(&rabbit, "frame", FieldTable::default()).await;
    let publisher = rabbit.publisher();
    // RabbitMQ's frame_max is 128 KiB: this header does not fit one frame.
    let big = Message::new("{}").with_header("x-trace", "t".repeat(200 * 1024));
    let err = publisher.publish(&queue, &big).await.unwrap_err();
    assert!(
        matches!(err, PublishError::TooLarge { .. }),
        "a header over frame_max is too large, not a closed connection: {err:?}"
    );
    assert!(err.is_permanent());
    publisher
        .publish(&queue, &Message::new("{}").with_message_id("after"))
        .await
        .expect("the publisher still works");
    let left = drain(&rabbit, &queue, Duration::from_millis(300)).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].meta.message_id, "after");
    delete(&rabbit, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_configured_maximum_fails_as_too_large_before_sending() {
    let rabbit = RabbitMq::connect_with(
        url_from_env(),
        ConnectOptions::default().max_message_size(64 * 1024),
    )
    .await
    .unwrap();
    let queue = classic_queue(&rabbit, "maxbody", FieldTable::default()).await;
    let err = rabbit
        .publisher()
        .publish(&queue, &Message::new(vec![b'x'; 100 * 1024]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::TooLarge { size } if size == 100 * 1024),
        "{err:?}"
    );
    assert_eq!(
        rabbit.message_count(&queue).await.unwrap(),
        0,
        "nothing sent"
    );
    delete(&rabbit, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_a_channel_another_publish_closed_are_republished_not_failed() {
    let rabbit = rabbit().await;
    let queue = classic_queue(&rabbit, "sharedch", FieldTable::default()).await;
    let publisher = rabbit.publisher();
    let missing = format!("{}/x", unique("nosuch-ex"));
    const N: usize = 400;
    let results: Vec<(usize, Result<(), PublishError>)> = futures::stream::iter(0..=N)
        .map(|i| {
            let publisher = publisher.clone();
            let (queue, missing) = (queue.clone(), missing.clone());
            async move {
                // One publish in the middle names an exchange that does not
                // exist: the broker closes the shared channel for it.
                let result = if i == N / 2 {
                    publisher.publish(&missing, &Message::new("{}")).await
                } else {
                    let m = Message::new("{}").with_message_id(format!("m-{i}"));
                    publisher.publish(&queue, &m).await
                };
                (i, result)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let failed: Vec<String> = results
        .iter()
        .filter(|(i, r)| *i != N / 2 && r.is_err())
        .map(|(i, r)| format!("{i}: {r:?}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} publishes failed with another's channel close: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let bad = &results.iter().find(|(i, _)| *i == N / 2).unwrap().1;
    assert!(
        matches!(bad, Err(PublishError::MissingDestination(_))),
        "{bad:?}"
    );
    let arrived = drain(&rabbit, &queue, Duration::from_millis(500)).await;
    let mut ids: Vec<String> = arrived.iter().map(|m| m.meta.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every other message arrived, same ids");
    delete(&rabbit, &queue).await;
}

/// A stack builder for the failing [`handler`]: fast retries, a memory store.
fn failing(rabbit: &RabbitMq) -> StackBuilder<String> {
    StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(RetryPolicy::retries(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .nack_delay(Duration::from_millis(200))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
}

/// A handler that fails permanently with `why`, counting its runs.
fn handler(runs: &Arc<AtomicU32>, why: &'static str) -> impl backstop::Handle<String> + use<> {
    let runs = Arc::clone(runs);
    handler_fn(move |_v: String, _ctx: Context| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { Err::<(), _>(HandlerError::permanent(why)) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_the_dlq_can_never_take_stops_the_worker_not_ready_with_the_message_kept() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "halt").await;
    // The DLQ is deleted behind the worker's back: every letter is unroutable.
    delete(&rabbit, &topology.dlq()).await;
    let publisher = rabbit.publisher();
    for id in ["poison", "next"] {
        publisher
            .publish(topology.queue(), &Message::new("\"x\"").with_message_id(id))
            .await
            .unwrap();
    }
    let runs = Arc::new(AtomicU32::new(0));
    let source = rabbit
        .source(topology.queue(), 1)
        .await
        .unwrap()
        .skip_destination_check();
    let shutdown = CancellationToken::new();
    let stack = failing(&rabbit).build(handler(&runs, "cannot ever work"));
    let runner = Runner::new(source, stack).with_shutdown(shutdown.clone());
    let readiness = runner.readiness();
    let run = tokio::spawn(runner.run());
    assert!(
        halted(&readiness).await,
        "the worker reports not ready: {:?}",
        readiness.get()
    );
    let why = readiness.get().unwrap_err();
    assert!(
        why.contains(&topology.dlq()),
        "the reason names the DLQ: {why}"
    );
    assert!(!run.is_finished(), "the worker does not exit by itself");
    // Both messages are back on the source, nothing acked without a letter.
    assert!(
        count_reaches(&rabbit, topology.queue(), 2).await,
        "the poison and the next message stay on the queue"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the poison ran once, no loop"
    );
    shutdown.cancel();
    let result = run.await.unwrap();
    assert!(
        matches!(result, Err(backstop::runner::RunError::Halted { .. })),
        "{result:?}"
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_refused_dlq_write_writes_the_original_letter_without_rerunning() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "pending").await;
    // A parking queue that holds one message and refuses more (a nack: transient).
    let parking = full_queue(&rabbit, "parking").await;
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("\"x\"").with_message_id("m-1"),
        )
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let why = "order m-1 refers to no customer";
    let stack = failing(&rabbit)
        .dead_letter_to(parking.clone())
        .build(handler(&runs, why));
    let source = rabbit
        .source(topology.queue(), 1)
        .await
        .unwrap()
        .skip_destination_check();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Runner::new(source, stack)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    // Let a few redeliveries meet the full parking queue, then make room.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let channel = rabbit.channel().await.unwrap();
    let filler = channel
        .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(filler.is_some(), "the filler was still there");
    let gone = count_reaches(&rabbit, topology.queue(), 0).await
        && count_reaches(&rabbit, &parking, 1).await;
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert!(
        gone,
        "the letter was written once there was room: {summary}"
    );
    assert!(
        summary.nacked >= 2,
        "refused while the queue was full: {summary}"
    );
    assert_eq!(summary.dead_lettered, 1, "{summary}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "redeliveries retried only the write, the handler ran once"
    );
    let letters = drain(&rabbit, &parking, Duration::from_millis(300)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(wire::ERROR_KIND), Some("permanent"));
    assert_eq!(
        letters[0].header(wire::ERROR),
        Some("permanent failure: order m-1 refers to no customer")
    );
    assert_eq!(letters[0].header(wire::ATTEMPT), Some("1"));
    let _ = channel.close(200, "OK".into()).await;
    delete(&rabbit, &parking).await;
    cleanup(&rabbit, &topology).await;
}
