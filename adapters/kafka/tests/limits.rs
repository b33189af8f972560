//! Limits and defaults: companion topics that keep dead letters and hold the
//! largest record of their source, and a producer that can write them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop::{Context, HandlerError, Message, RetryPolicy, StackBuilder, handler_fn};
use backstop_kafka::{Error, RetryTiers, TopicSpec};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companions_keep_dead_letters_forever_and_retries_for_four_delays() {
    let group = unique("g");
    let kafka = kafka(&group);
    let name = unique("retention");
    kafka
        .ensure_topics([TopicSpec::new(name.clone()).partitions(2)])
        .await
        .unwrap();
    let topics = kafka.topics().unwrap();

    let dlq = topics.configs(&kafka.dlq_topic(&name)).await.unwrap();
    assert_eq!(dlq.get("retention.ms").map(String::as_str), Some("-1"));
    assert_eq!(dlq.get("retention.bytes").map(String::as_str), Some("-1"));
    for (retry, tier) in kafka
        .retry_topics(&name)
        .iter()
        .zip(kafka.config().retry_tiers.tiers())
    {
        let configs = topics.configs(retry).await.unwrap();
        let retention: u128 = configs["retention.ms"].parse().unwrap();
        assert!(
            retention >= 4 * tier.delay().as_millis(),
            "{retry}: {retention}"
        );
    }

    // The one-broker test cluster: replication 1 and min.insync.replicas 1.
    let brokers = topics.brokers().await.unwrap();
    let source = topics.configs(&name).await.unwrap();
    let expected = if brokers >= 3 { "2" } else { "1" };
    assert_eq!(
        source.get("min.insync.replicas").map(String::as_str),
        Some(expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_overrides_companion_retention() {
    let group = unique("g");
    let kafka = kafka(&group);
    let name = unique("keep");
    kafka
        .ensure_topics([TopicSpec::new(name.clone()).companion_config("retention.ms", "86400000")])
        .await
        .unwrap();
    let dlq = kafka
        .topics()
        .unwrap()
        .configs(&kafka.dlq_topic(&name))
        .await
        .unwrap();
    assert_eq!(dlq["retention.ms"], "86400000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_letters_the_producer_cannot_send_is_refused() {
    let kafka = kafka(&unique("g"));
    let name = unique("huge");
    let error = kafka
        .ensure_topics([TopicSpec::new(name).max_message_bytes(20_000_000)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TooLarge {
                accepts: 20_000_000,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_above_a_megabyte_is_dead_lettered_and_committed_past() {
    let group = unique("g");
    let kafka = kafka(&group);
    let name = unique("big");
    kafka
        .ensure_topics([TopicSpec::new(name.clone()).max_message_bytes(2_000_000)])
        .await
        .unwrap();
    // A producer of its own that may send 2 MB, like the topic's writers.
    let writer = kafka
        .clone()
        .configure(|c| {
            c.producer_properties
                .insert("message.max.bytes".into(), "2000000".into());
        })
        .publisher()
        .unwrap();
    let poison = Message::new(vec![b'<'; 1_200_000]).with_message_id("poison");
    writer.publish(&name, &poison).await.unwrap();
    writer
        .publish(&name, &Message::new(r#"{"n":1}"#).with_message_id("fine"))
        .await
        .unwrap();

    let handled: Shared<Vec<String>> = shared();
    let h = Arc::clone(&handled);
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(
            RetryPolicy::retries(1).backoff(Duration::from_millis(10), Duration::from_millis(20)),
        )
        .nack_delay(Duration::from_millis(200))
        .build(handler_fn(move |_: serde_json::Value, ctx: Context| {
            let h = Arc::clone(&h);
            async move {
                h.lock().unwrap().push(ctx.message_id().to_owned());
                Ok::<(), HandlerError>(())
            }
        }));
    let worker = run(kafka.source(&[&name], 4).unwrap(), stack, 4);
    let letters = read_topic(&kafka, &kafka.dlq_topic(&name), 1, Duration::from_secs(30)).await;
    let committed = committed_eventually(
        &kafka,
        &name,
        &BTreeMap::from([(0, 2)]),
        Duration::from_secs(20),
    )
    .await;
    let summary = worker.stop().await;

    assert_eq!(
        ids(&letters),
        ids(std::slice::from_ref(&poison)),
        "{summary}"
    );
    assert!(letters.iter().all(|l| l.payload.len() == 1_200_000));
    assert_eq!(committed[&0], Some(2), "committed past the poison record");
    assert_eq!(*handled.lock().unwrap(), ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_retry_does_not_park_the_retry_partition() {
    let group = unique("g");
    let kafka = kafka(&group).retry_tiers(RetryTiers::new([Duration::from_secs(1)]));
    let name = topic(&kafka, "park", 1).await;
    let publisher = kafka.publisher().unwrap();

    // "a" asks to come back in an hour; "b" in 1.5 s. Both go to the one
    // partition of the 1 s tier, "b" behind "a".
    let runs: Shared<BTreeMap<String, Vec<Instant>>> = shared();
    let r = Arc::clone(&runs);
    let stack =
        StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
            .retry(RetryPolicy::retries(50).in_process_limit(Duration::from_millis(100)))
            .retry_sink(Arc::new(kafka.retry_sink().unwrap()))
            .build(handler_fn(move |_: serde_json::Value, ctx: Context| {
                let r = Arc::clone(&r);
                async move {
                    let id = ctx.message_id().to_owned();
                    let runs = {
                        let mut all = r.lock().unwrap();
                        let mine = all.entry(id.clone()).or_default();
                        mine.push(Instant::now());
                        mine.len()
                    };
                    match (id.as_str(), runs) {
                        ("a", _) => Err(HandlerError::transient("upstream says: an hour")
                            .retry_after(Duration::from_secs(3600))),
                        ("b", 1) => Err(HandlerError::transient("briefly")
                            .retry_after(Duration::from_millis(1500))),
                        _ => Ok(()),
                    }
                }
            }));
    let worker = run(kafka.source(&[&name], 4).unwrap(), stack, 4);
    publisher
        .publish(&name, &Message::new("{}").with_message_id("a"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || runs
            .lock()
            .unwrap()
            .contains_key("a"))
        .await
    );
    // Let "a"'s copy reach the retry partition first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publisher
        .publish(&name, &Message::new("{}").with_message_id("b"))
        .await
        .unwrap();
    let second = eventually(Duration::from_secs(15), || {
        runs.lock().unwrap().get("b").is_some_and(|b| b.len() >= 2)
    })
    .await;
    let b = runs.lock().unwrap().get("b").cloned().unwrap_or_default();
    worker.stop().await;
    assert!(second, "b's retry waited behind a's hour: runs of b {b:?}");
    let waited = b[1] - b[0];
    assert!(waited < Duration::from_secs(10), "b waited {waited:?}");
}

/// An 8 MB budget for the whole consumer, over 16 partitions that each may
/// hold 32 MiB on their own, against 16 MB waiting in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_over_all_partitions_not_per_partition() {
    let budget: usize = 8 << 20;
    let group = unique("g");
    let kafka = kafka(&group).configure(|c| c.max_pending_bytes = budget);
    let name = topic(&kafka, "budget", 16).await;
    let per_partition = 50;
    let sent: Vec<Message> = (0..16 * per_partition)
        .map(|i| {
            Message::new(vec![b'x'; 20_000])
                .with_message_id(format!("m{i}"))
                .with_key(format!("k{i}"))
        })
        .collect();
    publish_all(&kafka.publisher().unwrap(), &name, &sent).await;

    // Nothing is taken: the poll thread fetches until a budget stops it.
    // First wait until half the budget is held (the group's join and the
    // assignment of 16 partitions come first), then sample a while longer
    // for the upper bound.
    let mut source = kafka.plain_source(&[&name], 1).unwrap();
    let mut peak = 0;
    let filling = Instant::now() + Duration::from_secs(30);
    while peak < budget / 2 && Instant::now() < filling {
        peak = peak.max(source.pending().1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        peak = peak.max(source.pending().1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Beyond the budget, one fetch batch at most: 1 MiB of payload, one
    // more record, and their bookkeeping.
    assert!(
        peak >= budget / 2,
        "the test did not fill the budget: {peak}"
    );
    assert!(
        peak <= budget + (1 << 20) + 64 * 1024,
        "{peak} bytes held, budget {budget}"
    );
    // And the paused partitions resume: everything arrives.
    let seen = drain(&mut source, &ids(&sent), Duration::from_secs(60)).await;
    source.close().await;
    assert_eq!(seen.len(), sent.len());
}
