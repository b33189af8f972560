//! Non-blocking delayed retries through the retry topics.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backstop::{Context, HandlerError, RetryPolicy, StackBuilder, handler_fn, wire};
use common::*;

#[derive(Clone, Debug)]
struct Run {
    source: String,
    attempt: u32,
    at: SystemTime,
    due: Option<SystemTime>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_arrives_after_its_due_time_and_exhaustion_dead_letters() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "retry", 2).await;
    let sent = messages("rt", 6, 6);
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;

    // Messages 0..3 succeed on their second attempt; 3..6 always fail.
    let runs: Shared<BTreeMap<String, Vec<Run>>> = shared();
    let r = Arc::clone(&runs);
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(2).in_process_limit(Duration::from_millis(500)))
        .retry_sink(Arc::new(kafka.retry_sink().unwrap()))
        .build(handler_fn(move |v: serde_json::Value, ctx: Context| {
            let runs = Arc::clone(&r);
            async move {
                let run = Run {
                    source: ctx.meta().source.to_string(),
                    attempt: ctx.attempt(),
                    at: SystemTime::now(),
                    due: ctx.message().header(wire::DUE).and_then(wire::parse_time),
                };
                runs.lock()
                    .unwrap()
                    .entry(ctx.message_id().to_owned())
                    .or_default()
                    .push(run);
                let n = v["n"].as_u64().unwrap();
                if n < 3 && ctx.attempt() >= 2 {
                    return Ok(());
                }
                // 3 s: above the 2 s tier, so the 4 s tier's topic carries it.
                Err(HandlerError::transient("later").retry_after(Duration::from_secs(3)))
            }
        }));
    let worker = run(kafka.source(&[&topic], 8).unwrap(), stack, 8);
    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 3, Duration::from_secs(40)).await;
    let summary = worker.stop().await;

    let tier = &kafka.retry_topics(&topic)[1];
    assert!(tier.ends_with(".retry.4s"));
    let runs = runs.lock().unwrap();
    for m in &sent {
        let n: usize = m.header("seq").unwrap().parse().unwrap();
        let mine = &runs[&m.meta.message_id];
        let expected_attempts = if n < 3 { 2 } else { 3 };
        assert_eq!(mine.len(), expected_attempts, "{n}: {mine:?}");
        assert_eq!(mine[0].source, topic);
        for (i, pair) in mine.windows(2).enumerate() {
            let (before, after) = (&pair[0], &pair[1]);
            assert_eq!(after.attempt, before.attempt + 1);
            assert_eq!(
                &after.source,
                tier,
                "attempt {} came from the retry topic",
                i + 2
            );
            let due = after.due.expect("a retry copy carries its due time");
            assert!(
                after.at >= due,
                "attempt ran {:?} before its due time",
                due.duration_since(after.at)
            );
            assert!(after.at.duration_since(before.at).unwrap() >= Duration::from_secs(3));
        }
    }
    assert_eq!(ids(&letters), ids(&sent[3..]), "{summary}");
    for letter in &letters {
        assert_eq!(letter.header(wire::ERROR_KIND), Some("exhausted"));
        assert_eq!(letter.header(wire::ATTEMPT), Some("3"));
        assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some(topic.as_str()));
        assert_eq!(letter.header(wire::GROUP), Some(group.as_str()));
    }
    assert_eq!(summary.handled, 3);
    assert_eq!(summary.dead_lettered, 3);
    assert_eq!(summary.deferred, 3 + 3 * 2);
}

/// Records published to `topic` by a producer that forges backstop's
/// routing and counting headers: they name `decoy` (another topic of the
/// same group, with its own DLQ and retry topics), another group and an
/// attempt far past the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_routing_and_attempt_headers_neither_reroute_nor_skip_the_run() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "forged", 1).await;
    let decoy = topic_named(&kafka, &format!("{topic}-decoy")).await;
    let mut sent = messages("fg", 4, 4);
    for (i, m) in sent.iter_mut().enumerate() {
        m.headers
            .insert(wire::ORIGINAL_SOURCE.to_owned(), decoy.clone());
        m.headers.insert(wire::GROUP.to_owned(), "other".to_owned());
        if i % 2 == 0 {
            m.headers.insert(wire::ATTEMPT.to_owned(), "99".to_owned());
        }
    }
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;

    let runs: Shared<BTreeMap<String, Vec<(String, u32)>>> = shared();
    let r = Arc::clone(&runs);
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(2).in_process_limit(Duration::from_millis(500)))
        .retry_sink(Arc::new(kafka.retry_sink().unwrap()))
        .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let runs = Arc::clone(&r);
            async move {
                runs.lock()
                    .unwrap()
                    .entry(ctx.message_id().to_owned())
                    .or_default()
                    .push((ctx.meta().source.to_string(), ctx.attempt()));
                Err(HandlerError::transient("later").retry_after(Duration::from_secs(1)))
            }
        }));
    let worker = run(kafka.source(&[&topic], 8).unwrap(), stack, 8);
    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 4, Duration::from_secs(40)).await;
    let summary = worker.stop().await;

    let runs = runs.lock().unwrap().clone();
    for (i, m) in sent.iter().enumerate() {
        let mine: Vec<u32> = runs
            .get(&m.meta.message_id)
            .map(|r| r.iter().map(|r| r.1).collect())
            .unwrap_or_default();
        if i % 2 == 0 {
            assert_eq!(mine, [3], "a forged attempt runs once, as the last attempt");
        } else {
            assert_eq!(
                mine,
                [1, 2, 3],
                "retried through this topic's own retry topic"
            );
        }
    }
    assert_eq!(ids(&letters), ids(&sent), "{summary}");
    for letter in &letters {
        assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some(topic.as_str()));
        assert_eq!(letter.header(wire::GROUP), Some(group.as_str()));
        assert_eq!(letter.header(wire::ATTEMPT), Some("3"));
    }
    let mut decoys = vec![kafka.dlq_topic(&decoy), decoy.clone()];
    decoys.extend(kafka.retry_topics(&decoy));
    let admin = kafka.topics().unwrap();
    for t in decoys {
        let end = admin.end_offsets(&t).await.unwrap();
        assert!(
            end.values().all(|o| *o == 0),
            "forged headers wrote to {t}: {end:?}"
        );
    }
}

/// Creates `name` with its DLQ and retry topics for the kafka's group.
async fn topic_named(kafka: &backstop_kafka::Kafka, name: &str) -> String {
    kafka
        .ensure_topics([backstop_kafka::TopicSpec::new(name.to_owned())])
        .await
        .unwrap();
    name.to_owned()
}
