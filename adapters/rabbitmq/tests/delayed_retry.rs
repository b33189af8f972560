//! Broker-delayed retry through the per-tier delay queues.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::error::SinkError;
use backstop::publish::Publisher;
use backstop::retry::RetrySink;
use backstop::{
    CancellationToken, Context, ErrorKind, HandlerError, Message, RetryPolicy, Runner,
    StackBuilder, handler_fn, wire,
};
use backstop_rabbitmq::Topology;
use common::{cleanup, drain, rabbit, unique};

const TIER: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_comes_back_through_the_delay_queue_with_the_attempt_incremented() {
    let rabbit = rabbit().await;
    let policy = RetryPolicy::retries(2).in_process_limit(Duration::from_millis(100));
    // Tiers 500ms and 1s: a 700 ms delay goes to the 1s tier.
    let topology = Topology::quorum(unique("delayed"))
        .max_attempts(policy.max_attempts)
        .retry_tiers([Duration::from_millis(500), TIER]);
    rabbit.declare(&topology).await.unwrap();
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("\"later\"").with_message_id("m-later"),
        )
        .await
        .unwrap();

    let runs: Arc<Mutex<Vec<(u32, String, Instant)>>> = Arc::default();
    let r = Arc::clone(&runs);
    let handler = handler_fn(move |_v: String, ctx: Context| {
        let runs = Arc::clone(&r);
        async move {
            let header = ctx
                .headers()
                .get(wire::ATTEMPT)
                .map(str::to_owned)
                .unwrap_or_default();
            runs.lock()
                .unwrap()
                .push((ctx.attempt(), header, Instant::now()));
            Err::<(), _>(
                HandlerError::transient("downstream busy").retry_after(Duration::from_millis(700)),
            )
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(policy)
        .retry_sink(Arc::new(rabbit.retry_sink()))
        .build(handler);
    let source = rabbit.source(topology.queue(), 4).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );

    let mut letters = Vec::new();
    for _ in 0..100 {
        if rabbit.message_count(&topology.dlq()).await.unwrap() == 1 {
            letters = drain(&rabbit, &topology.dlq(), Duration::from_millis(300)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();

    let runs = runs.lock().unwrap().clone();
    let attempts: Vec<u32> = runs.iter().map(|(a, _, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "{summary}");
    assert_eq!(runs[0].1, "", "the original carries no attempt header");
    assert_eq!(runs[1].1, "2");
    assert_eq!(runs[2].1, "3");
    for pair in runs.windows(2) {
        let waited = pair[1].2 - pair[0].2;
        assert!(
            waited >= TIER,
            "came back after {waited:?}, before the 1s tier's TTL"
        );
        assert!(waited < TIER * 5, "came back after {waited:?}");
    }
    assert_eq!(summary.deferred, 2, "{summary}");
    assert_eq!(summary.dead_lettered, 1, "{summary}");
    assert_eq!(summary.nacked, 0, "{summary}");

    assert_eq!(
        letters.len(),
        1,
        "dead-lettered once after the last attempt"
    );
    let letter = &letters[0];
    assert_eq!(letter.meta.message_id, "m-later");
    assert_eq!(
        letter.header(wire::ERROR_KIND),
        Some(ErrorKind::Exhausted.as_str())
    );
    assert_eq!(letter.header(wire::ATTEMPT), Some("3"));
    assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some(topology.queue()));
    assert!(letter.header(wire::DUE).is_none());
    for tier in topology.tiers() {
        assert_eq!(
            rabbit
                .message_count(&tier.queue_for(topology.queue()))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_sink_refuses_classic_and_unknown_queues() {
    let rabbit = rabbit().await;
    let classic = Topology::classic(unique("classic"));
    rabbit.declare(&classic).await.unwrap();
    let sink = rabbit.retry_sink();
    let mut copy = Message::new("x");
    copy.meta.source = classic.queue().into();
    let error = sink
        .retry_later(copy.clone(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SinkError::Unsupported(text) if text.contains("classic")),
        "{error}"
    );

    copy.meta.source = unique("unknown").into();
    let error = sink
        .retry_later(copy.clone(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SinkError::Unsupported(text) if text.contains("no known topology")),
        "{error}"
    );

    let no_tiers = Topology::quorum(unique("no-tiers"));
    rabbit.declare(&no_tiers).await.unwrap();
    copy.meta.source = no_tiers.queue().into();
    let error = sink
        .retry_later(copy, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SinkError::Unsupported(text) if text.contains("no retry tiers")),
        "{error}"
    );
    cleanup(&rabbit, &classic).await;
    cleanup(&rabbit, &no_tiers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_sink_picks_the_smallest_sufficient_tier_else_the_largest() {
    let rabbit = rabbit().await;
    let s = Duration::from_secs;
    let topology = Topology::quorum(unique("tiers")).retry_tiers([s(5), s(30), s(300)]);
    rabbit.register(&topology);
    let sink = rabbit.retry_sink();
    let q = topology.queue();
    assert_eq!(
        sink.destination(q, Duration::from_millis(1500)).unwrap(),
        format!("{q}.retry.5s")
    );
    assert_eq!(
        sink.destination(q, s(30)).unwrap(),
        format!("{q}.retry.30s")
    );
    assert_eq!(sink.destination(q, s(31)).unwrap(), format!("{q}.retry.5m"));
    assert_eq!(
        sink.destination(q, s(3600)).unwrap(),
        format!("{q}.retry.5m")
    );
}
