//! Consuming against the real broker: redelivery, prefetch, the full stack, shutdown.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::publish::Publisher;
use backstop::runner::{Source, SourceError};
use backstop::{
    CancellationToken, Context, HandlerError, Message, RetryPolicy, Runner, StackBuilder,
    handler_fn, wire,
};
use backstop_rabbitmq::lapin::options::QueueDeleteOptions;
use common::{
    Seen, cleanup, drain, eventually, next_within, publish_numbered, quorum, rabbit, unique,
};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_redelivered_and_a_dropped_one_too() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "nack").await;
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("again").with_message_id("m-nack"),
        )
        .await
        .unwrap();
    let mut source = rabbit.source(topology.queue(), 1).await.unwrap();

    let first = next_within(&mut source, WAIT).await.expect("delivered");
    assert!(!first.message().meta.redelivered);
    first.nack(true).await.unwrap();

    let second = next_within(&mut source, WAIT)
        .await
        .expect("redelivered after a nack");
    assert_eq!(second.message().meta.message_id, "m-nack");
    assert!(second.message().meta.redelivered);
    drop(second); // abandoned: nacked with requeue by the drop

    let third = next_within(&mut source, WAIT)
        .await
        .expect("redelivered after a drop");
    assert_eq!(third.message().meta.message_id, "m-nack");
    third.ack().await.unwrap();
    assert!(
        next_within(&mut source, Duration::from_millis(300))
            .await
            .is_none(),
        "acked once, gone"
    );
    source.close().await;
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prefetch_one_the_second_message_waits_for_the_first_ack() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "prefetch").await;
    let publisher = rabbit.publisher();
    publish_numbered(&publisher, topology.queue(), "pf", 2).await;
    let mut source = rabbit.source(topology.queue(), 1).await.unwrap();
    assert_eq!(source.prefetch(), 1);
    let first = next_within(&mut source, WAIT).await.expect("first");
    assert!(
        next_within(&mut source, Duration::from_millis(700))
            .await
            .is_none(),
        "the broker holds the second message back while the first is unacked"
    );
    first.ack().await.unwrap();
    let second = next_within(&mut source, WAIT)
        .await
        .expect("second after the ack");
    assert_ne!(second.message().meta.message_id, "");
    second.ack().await.unwrap();
    source.close().await;
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_then_success_is_acked_once() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "transient").await;
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("\"work\"").with_message_id("m-flaky"),
        )
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (r, a) = (Arc::clone(&runs), Arc::clone(&attempts));
    let handler = handler_fn(move |_text: String, ctx: Context| {
        let (runs, attempts) = (Arc::clone(&r), Arc::clone(&a));
        async move {
            attempts.lock().unwrap().push(ctx.attempt());
            if runs.fetch_add(1, Ordering::SeqCst) < 3 {
                return Err(HandlerError::transient("not yet"));
            }
            Ok(())
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(
            RetryPolicy::retries(5).backoff(Duration::from_millis(10), Duration::from_millis(40)),
        )
        .build(handler);
    let source = rabbit.source(topology.queue(), 4).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    assert!(eventually(WAIT, || runs.load(Ordering::SeqCst) >= 4).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();
    assert_eq!(summary.handled, 1, "{summary}");
    assert_eq!(
        summary.received, 1,
        "one delivery, retried in process: {summary}"
    );
    assert_eq!(
        summary.nacked + summary.dead_lettered + summary.ack_failed,
        0,
        "{summary}"
    );
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        rabbit.message_count(topology.queue()).await.unwrap(),
        0,
        "acked"
    );
    assert_eq!(
        rabbit.message_count(&topology.dlq()).await.unwrap(),
        0,
        "not dead-lettered"
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_poison_payloads_land_in_the_dlq_with_headers() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "dlq").await;
    let publisher = rabbit.publisher();
    publisher
        .publish(
            topology.queue(),
            &Message::new(r#"{"ok":false}"#)
                .with_message_id("m-permanent")
                .with_header("tenant", "acme"),
        )
        .await
        .unwrap();
    publisher
        .publish(
            topology.queue(),
            &Message::new("{not json").with_message_id("m-poison"),
        )
        .await
        .unwrap();
    publisher
        .publish(
            topology.queue(),
            &Message::new(r#"{"ok":true}"#).with_message_id("m-good"),
        )
        .await
        .unwrap();
    let handled = Seen::default();
    let h = handled.clone();
    let handler = handler_fn(move |value: serde_json::Value, ctx: Context| {
        let handled = h.clone();
        async move {
            if value["ok"] == false {
                return Err(HandlerError::permanent("order rejected"));
            }
            handled.insert(ctx.message_id());
            Ok(())
        }
    });
    let stack =
        StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink())).build(handler);
    let source = rabbit.source(topology.queue(), 4).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    let dlq = topology.dlq();
    let r = rabbit.clone();
    let mut dead = 0;
    for _ in 0..100 {
        dead = r.message_count(&dlq).await.unwrap();
        if dead == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead, 2);
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();
    assert_eq!(
        (summary.handled, summary.dead_lettered, summary.nacked),
        (1, 2, 0),
        "{summary}"
    );
    assert_eq!(handled.len(), 1);

    let letters: HashMap<String, Message> = drain(&rabbit, &dlq, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|m| (m.meta.message_id.clone(), m))
        .collect();
    assert_eq!(letters.len(), 2);
    let permanent = &letters["m-permanent"];
    assert_eq!(permanent.payload, r#"{"ok":false}"#);
    assert_eq!(permanent.header(wire::ERROR_KIND), Some("permanent"));
    assert!(
        permanent
            .header(wire::ERROR)
            .is_some_and(|e| e.contains("order rejected"))
    );
    assert_eq!(
        permanent.header(wire::ORIGINAL_SOURCE),
        Some(topology.queue())
    );
    assert_eq!(permanent.header(wire::MESSAGE_ID), Some("m-permanent"));
    assert_eq!(permanent.header(wire::ATTEMPT), Some("1"));
    assert_eq!(permanent.header("tenant"), Some("acme"));
    assert!(permanent.header(wire::FIRST_FAILURE).is_some());
    assert!(permanent.header(wire::LAST_FAILURE).is_some());
    let poison = &letters["m-poison"];
    assert_eq!(poison.payload, "{not json");
    assert_eq!(poison.header(wire::ERROR_KIND), Some("decode"));
    assert_eq!(poison.header(wire::ORIGINAL_SOURCE), Some(topology.queue()));
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_or_returns_in_flight_messages() {
    const N: usize = 40;
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "shutdown").await;
    let run = unique("run");
    publish_numbered(&rabbit.publisher(), topology.queue(), &run, N).await;

    let handled = Seen::default();
    let started = Arc::new(AtomicU32::new(0));
    // Runs after the first `finishing` take `delay`; later ones never finish.
    let worker = |delay: Duration, finishing: u32| {
        let (handled, started) = (handled.clone(), Arc::clone(&started));
        handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let (handled, started) = (handled.clone(), Arc::clone(&started));
            async move {
                if started.fetch_add(1, Ordering::SeqCst) >= finishing {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
                handled.insert(ctx.message_id());
                Ok::<_, HandlerError>(())
            }
        })
    };
    // A worker stopped with a deadline shorter than some handlers need: the
    // first wave of 8 finishes (400 ms each), the runs started after it never
    // do, so once 12 started, at least 4 are in flight whenever the cancel
    // lands and the 200 ms deadline cuts them off.
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .build(worker(Duration::from_millis(400), 8));
    let source = rabbit.source(topology.queue(), 8).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(8)
            .shutdown_deadline(Duration::from_millis(200))
            .with_shutdown(shutdown.clone())
            .run(),
    );
    assert!(eventually(WAIT, || started.load(Ordering::SeqCst) >= 12).await);
    shutdown.cancel();
    let first = runner.await.unwrap().unwrap();
    assert!(first.handled >= 1, "{first}");
    assert!(
        first.abandoned >= 1,
        "some were cut off by the deadline: {first}"
    );
    assert!(handled.len() < N);

    // Whatever was not finished is still on the queue: a second worker gets it all.
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .build(worker(Duration::ZERO, u32::MAX));
    let source = rabbit.source(topology.queue(), 8).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(8)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    assert!(
        eventually(Duration::from_secs(20), || handled.len() == N).await,
        "missing {:?}",
        handled.missing(&run, N)
    );
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    assert!(handled.missing(&run, N).is_empty());
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_queue_cancels_the_consumer_with_a_clear_error() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "deleted").await;
    let mut source = rabbit.source(topology.queue(), 1).await.unwrap();
    let channel = rabbit.channel().await.unwrap();
    channel
        .queue_delete(topology.queue().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("the source notices");
    match next {
        Some(Err(error @ SourceError::Cancelled(_))) => {
            assert!(error.is_fatal());
            assert!(error.to_string().contains(topology.queue()), "{error}");
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert!(source.next().await.is_none(), "a cancelled source ends");
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_a_missing_queue_fails_up_front() {
    let rabbit = rabbit().await;
    let error = rabbit.source(&unique("missing"), 1).await.unwrap_err();
    assert!(
        matches!(error, backstop_rabbitmq::ConsumeError::QueueNotFound { .. }),
        "{error:?}"
    );
}

/// Publishes `body` with no message id (property or header) and a
/// `timestamp` of 2^64-1 (a date before 1970 as a Java producer writes it).
async fn publish_id_less(rabbit: &backstop_rabbitmq::RabbitMq, queue: &str, body: &[u8]) {
    use backstop_rabbitmq::lapin::BasicProperties;
    use backstop_rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let channel = rabbit.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_timestamp(u64::MAX),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = channel.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_less_message_keeps_one_id_across_redeliveries_and_consumers() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "idless").await;
    publish_id_less(&rabbit, topology.queue(), br#"{"no":"id"}"#).await;

    let mut source = rabbit.source(topology.queue(), 1).await.unwrap();
    let first = next_within(&mut source, WAIT).await.expect("delivered");
    let id = first.message().meta.message_id.clone();
    assert_eq!(
        first.message().meta.timestamp,
        None,
        "2^64-1 is no timestamp"
    );
    assert_eq!(
        first.message().meta.id_source,
        backstop::message::IdSource::Digest
    );
    drop(first);
    let second = next_within(&mut source, WAIT).await.expect("redelivered");
    assert!(second.message().meta.redelivered);
    assert_eq!(
        second.message().meta.message_id,
        id,
        "the same id on redelivery"
    );
    drop(second);
    // Another consumer (a restarted worker) sees the same id too.
    source.close().await;
    let mut other = rabbit.source(topology.queue(), 1).await.unwrap();
    let third = next_within(&mut other, WAIT)
        .await
        .expect("delivered to another consumer");
    assert_eq!(
        third.message().meta.message_id,
        id,
        "the same id for another consumer"
    );
    third.ack().await.unwrap();
    other.close().await;
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_by_someone_else_is_adopted_with_only_its_companions() {
    use backstop_rabbitmq::lapin::options::QueueDeclareOptions;
    use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable};
    use backstop_rabbitmq::{Topology, TopologyError};
    let rabbit = rabbit().await;
    let queue = unique("adopt");
    // Declared by its owner: a classic queue with arguments of its own.
    let channel = rabbit.channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    let topology = Topology::quorum(queue.as_str()).retry_tiers([Duration::from_secs(5)]);
    assert!(
        matches!(
            rabbit.declare(&topology).await,
            Err(TopologyError::Mismatch { .. })
        ),
        "redeclaring it with backstop's arguments is refused"
    );
    rabbit
        .declare(&topology.clone().adopt())
        .await
        .expect("adopting declares only the companions");
    assert_eq!(rabbit.message_count(&topology.dlq()).await.unwrap(), 0);
    let delay = topology.tiers()[0].queue_for(&queue);
    assert_eq!(rabbit.message_count(&delay).await.unwrap(), 0);
    // The source starts: its DLQ and delay queue exist.
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).build(handler_fn(
        |_v: String, _ctx: Context| async { Ok::<(), HandlerError>(()) },
    ));
    let runner = Runner::new(rabbit.source(&queue, 1).await.unwrap(), stack);
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    assert!(
        run.await.unwrap().is_ok(),
        "the adopted queue's source runs"
    );
    let missing = Topology::quorum(unique("adopt-missing")).adopt();
    assert!(matches!(
        rabbit.declare(&missing).await,
        Err(TopologyError::AdoptedQueueMissing { .. })
    ));
    cleanup(&rabbit, &topology).await;
    cleanup(&rabbit, &missing).await;
    let _ = channel.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_amqp_properties() {
    use backstop_rabbitmq::lapin::BasicProperties;
    use backstop_rabbitmq::lapin::options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    };
    use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable};
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "props").await;
    let channel = rabbit.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("app".into(), AMQPValue::LongString("v".into()));
    channel
        .basic_publish(
            "".into(),
            topology.queue().into(),
            BasicPublishOptions::default(),
            b"\"gz\"",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("m-props".into())
                .with_content_type("application/json".into())
                .with_content_encoding("gzip".into())
                .with_correlation_id("corr-1".into())
                .with_reply_to("replies".into())
                .with_type("order.placed".into())
                .with_app_id("shop".into())
                .with_priority(3)
                .with_timestamp(1_600_000_000)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).build(handler_fn(
        |_v: String, _ctx: Context| async { Err::<(), _>(HandlerError::permanent("no")) },
    ));
    let runner = Runner::new(rabbit.source(topology.queue(), 1).await.unwrap(), stack);
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());
    let mut got = None;
    for _ in 0..100 {
        got = channel
            .basic_get(
                topology.dlq().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    run.await.unwrap().unwrap();
    let got = got.expect("the dead letter");
    let p = &got.delivery.properties;
    let text = |v: &Option<backstop_rabbitmq::lapin::types::ShortString>| {
        v.as_ref().map(|s| s.as_str().to_owned())
    };
    assert_eq!(text(p.content_type()).as_deref(), Some("application/json"));
    assert_eq!(text(p.content_encoding()).as_deref(), Some("gzip"));
    assert_eq!(text(p.correlation_id()).as_deref(), Some("corr-1"));
    assert_eq!(text(p.reply_to()).as_deref(), Some("replies"));
    assert_eq!(text(p.kind()).as_deref(), Some("order.placed"));
    assert_eq!(text(p.app_id()).as_deref(), Some("shop"));
    assert_eq!(*p.priority(), Some(3));
    assert_eq!(*p.timestamp(), Some(1_600_000_000));
    let _ = channel.close(200, "OK".into()).await;
    cleanup(&rabbit, &topology).await;
}
