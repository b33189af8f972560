//! Dead letters: confirmed before the source is committed, per group.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use backstop::{Context, HandlerError, Message, RetryPolicy, StackBuilder, handler_fn, wire};
use common::*;

fn bad(n: usize) -> bool {
    (10..15).contains(&n)
}

fn batch(prefix: &str) -> Vec<Message> {
    // 0..10 good, 10..15 rejected by the handler, 15..18 not JSON at all.
    let mut all = messages(prefix, 15, 18);
    for i in 15..18 {
        all.push(
            Message::new(format!("<poison {i}>"))
                .with_message_id(format!("{prefix}-{i}"))
                .with_key(format!("k{i}"))
                .with_header("seq", i.to_string()),
        );
    }
    all
}

fn stack(kafka: &backstop_kafka::Kafka, handled: &Shared<BTreeSet<String>>) -> backstop::Stack {
    let handled = Arc::clone(handled);
    StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(
            RetryPolicy::retries(2).backoff(Duration::from_millis(10), Duration::from_millis(20)),
        )
        .nack_delay(Duration::from_millis(200))
        .build(handler_fn(move |v: serde_json::Value, ctx: Context| {
            let handled = Arc::clone(&handled);
            async move {
                let n = v["n"].as_u64().unwrap() as usize;
                if bad(n) {
                    return Err(HandlerError::permanent(format!("order {n} is invalid")));
                }
                handled.lock().unwrap().insert(ctx.message_id().to_owned());
                Ok(())
            }
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_poison_land_in_the_dlq_with_full_headers() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "dlq", 2).await;
    let sent = batch("dl");
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;
    let handled: Shared<BTreeSet<String>> = shared();
    let worker = run(
        kafka.source(&[&topic], 8).unwrap(),
        stack(&kafka, &handled),
        8,
    );

    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 8, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(20), || handled.lock().unwrap().len()
            == 10)
        .await
    );
    let summary = worker.stop().await;
    assert_eq!(summary.dead_lettered, 8, "{summary}");
    assert_eq!(ids(&letters).len(), 8, "every letter arrived");
    for letter in &letters {
        let original = sent
            .iter()
            .find(|m| m.meta.message_id == letter.meta.message_id)
            .unwrap();
        let n: usize = original.header("seq").unwrap().parse().unwrap();
        let kind = if bad(n) { "permanent" } else { "decode" };
        assert_eq!(letter.header(wire::ERROR_KIND), Some(kind), "{letter:?}");
        assert_eq!(letter.payload, original.payload);
        assert_eq!(letter.key, original.key, "the key is kept");
        assert_eq!(
            letter.header("seq"),
            original.header("seq"),
            "application headers are kept"
        );
        assert_eq!(
            letter.header(wire::MESSAGE_ID),
            Some(original.meta.message_id.as_str())
        );
        assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some(topic.as_str()));
        assert!(letter.header(wire::ORIGINAL_PARTITION).is_some());
        assert!(letter.header(wire::ORIGINAL_OFFSET).is_some());
        assert_eq!(letter.header(wire::GROUP), Some(group.as_str()));
        assert!(letter.header(wire::ERROR).is_some_and(|e| !e.is_empty()));
        assert!(letter.header(wire::FIRST_FAILURE).is_some());
        assert!(letter.header(wire::LAST_FAILURE).is_some());
        assert_eq!(letter.header(wire::ATTEMPT), Some("1"));
        if bad(n) {
            assert!(letter.header(wire::ERROR).unwrap().contains("is invalid"));
        }
    }
    let end = kafka.topics().unwrap().end_offsets(&topic).await.unwrap();
    let committed = committed_eventually(&kafka, &topic, &end, Duration::from_secs(5)).await;
    let expected: BTreeMap<i32, Option<i64>> = end.iter().map(|(p, o)| (*p, Some(*o))).collect();
    assert_eq!(
        committed, expected,
        "everything is committed once dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dlq_leaves_the_source_uncommitted() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = unique("nodlq");
    // Only the topic: its DLQ does not exist and cannot be auto-created.
    kafka
        .topics()
        .unwrap()
        .create(&[spec(&topic, 1)])
        .await
        .unwrap();
    let mut sent = messages("nd", 10, 10);
    sent[1] = Message::new("not json")
        .with_message_id("nd-1")
        .with_key("k1");
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    let handled: Shared<BTreeSet<String>> = shared();
    let worker = run(
        kafka.source(&[&topic], 8).unwrap().skip_destination_check(),
        stack(&kafka, &handled),
        8,
    );
    assert!(
        eventually(Duration::from_secs(30), || handled.lock().unwrap().len()
            == 9)
        .await,
        "later messages are handled meanwhile"
    );
    // The failed DLQ write waits for the missing topic (~2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert_eq!(
        committed[&0],
        Some(1),
        "committed up to the message whose DLQ write failed, not past it"
    );
    // A missing DLQ is permanent: the worker stopped consuming instead of
    // retrying the write forever.
    let (reason, summary) = worker.stop_halted().await;
    assert!(reason.contains(".dlq"), "{reason}");
    assert_eq!(
        summary.nacked, 1,
        "the poison message was nacked once: {summary}"
    );
    assert_eq!(summary.dead_lettered, 0);
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert_eq!(
        committed[&0],
        Some(1),
        "close did not commit past it either"
    );

    // Once the DLQ exists, a restarted worker (a new producer: the old one
    // remembers the topic as missing for a while) dead-letters the message
    // and the offsets move to the end.
    kafka.ensure_topics([spec(&topic, 1)]).await.unwrap();
    let kafka = common::kafka(&group);
    let worker = run(
        kafka.source(&[&topic], 8).unwrap(),
        stack(&kafka, &handled),
        8,
    );
    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 1, Duration::from_secs(30)).await;
    assert_eq!(ids(&letters), BTreeSet::from(["nd-1".to_owned()]));
    let committed = committed_eventually(
        &kafka,
        &topic,
        &BTreeMap::from([(0, 10)]),
        Duration::from_secs(15),
    )
    .await;
    worker.stop().await;
    assert_eq!(committed[&0], Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_never_see_each_others_retries_or_dead_letters() {
    let (ga, gb) = (unique("ga"), unique("gb"));
    let (a, b) = (kafka(&ga), kafka(&gb));
    let topic = topic(&a, "groups", 2).await;
    b.ensure_topics([spec(&topic, 2)]).await.unwrap();
    let sent = messages("gr", 20, 5);
    publish_all(&a.publisher().unwrap(), &topic, &sent).await;

    // Group a: each message fails, is retried through a's retry topic, then dead-lettered.
    let a_runs: Shared<Vec<(String, u32)>> = shared();
    let runs = Arc::clone(&a_runs);
    let stack_a = StackBuilder::<serde_json::Value>::new(Arc::new(a.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(1).in_process_limit(Duration::from_millis(500)))
        .retry_sink(Arc::new(a.retry_sink().unwrap()))
        .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let runs = Arc::clone(&runs);
            async move {
                runs.lock()
                    .unwrap()
                    .push((ctx.meta().source.to_string(), ctx.attempt()));
                Err::<(), _>(
                    HandlerError::transient("a cannot").retry_after(Duration::from_secs(1)),
                )
            }
        }));
    // Group b: handles everything once.
    let b_runs: Shared<Vec<(String, u32, String)>> = shared();
    let runs = Arc::clone(&b_runs);
    let stack_b = StackBuilder::<serde_json::Value>::new(Arc::new(b.dead_letter_sink().unwrap()))
        .retry_sink(Arc::new(b.retry_sink().unwrap()))
        .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let runs = Arc::clone(&runs);
            async move {
                runs.lock().unwrap().push((
                    ctx.meta().source.to_string(),
                    ctx.attempt(),
                    ctx.message_id().to_owned(),
                ));
                Ok::<_, HandlerError>(())
            }
        }));
    let wa = run(a.source(&[&topic], 8).unwrap(), stack_a, 8);
    let wb = run(b.source(&[&topic], 8).unwrap(), stack_b, 8);
    let letters = read_topic(&a, &a.dlq_topic(&topic), 20, Duration::from_secs(40)).await;
    assert!(
        eventually(Duration::from_secs(10), || b_runs.lock().unwrap().len()
            >= 20)
        .await
    );
    wa.stop().await;
    wb.stop().await;

    assert_eq!(ids(&letters), ids(&sent), "a dead-lettered every message");
    assert!(
        letters
            .iter()
            .all(|l| l.header(wire::ERROR_KIND) == Some("exhausted")
                && l.header(wire::GROUP) == Some(ga.as_str()))
    );
    let a_runs = a_runs.lock().unwrap().clone();
    assert_eq!(
        a_runs
            .iter()
            .filter(|(s, n)| *s == topic && *n == 1)
            .count(),
        20
    );
    assert_eq!(
        a_runs
            .iter()
            .filter(|(s, n)| s.starts_with(&format!("{topic}.{ga}.retry.")) && *n == 2)
            .count(),
        20,
        "second attempts ran from a's retry topic: {a_runs:?}"
    );
    let b_runs = b_runs.lock().unwrap().clone();
    assert!(
        b_runs.iter().all(|(s, n, _)| *s == topic && *n == 1),
        "b only ever ran its own first attempts: {b_runs:?}"
    );
    assert_eq!(
        b_runs
            .iter()
            .map(|(_, _, id)| id.clone())
            .collect::<BTreeSet<_>>(),
        ids(&sent)
    );
    let admin = b.topics().unwrap();
    for t in b.retry_topics(&topic).iter().chain([&b.dlq_topic(&topic)]) {
        let end: i64 = admin.end_offsets(t).await.unwrap().values().sum();
        assert_eq!(end, 0, "{t} stayed empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dlq_or_retry_topic_fails_at_start_naming_it() {
    let kafka = kafka(&unique("g"));
    let topic = unique("nocompanions");
    kafka
        .topics()
        .unwrap()
        .create(&[spec(&topic, 1)])
        .await
        .unwrap();
    let handled: Shared<BTreeSet<String>> = shared();
    let run =
        backstop::Runner::new(kafka.source(&[&topic], 4).unwrap(), stack(&kafka, &handled)).run();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the runner stops at start, not at the first poison message");
    let Err(backstop::runner::RunError::Source { source, summary }) = result else {
        panic!("a source without its DLQ must not run: {result:?}");
    };
    let text = source.to_string();
    assert!(text.contains(&kafka.dlq_topic(&topic)), "{text}");
    assert!(text.contains(&kafka.retry_topics(&topic)[0]), "{text}");
    assert!(text.contains("ensure_topics"), "{text}");
    assert_eq!(summary.received, 0);
    let _ = kafka.topics().unwrap().delete(&[&topic]).await;
}
