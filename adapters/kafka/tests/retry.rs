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
                    source: ctx.meta().source.clone(),
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
    assert_eq!(letters.len(), 3, "{summary}");
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
