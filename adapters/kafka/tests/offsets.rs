//! Offsets: never committed past an unfinished message, and a new consumer
//! of the group resumes at the first unfinished offset.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backstop::Message;
use backstop::runner::Source;
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_offset_is_redelivered_after_a_restart() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "nack", 1).await;
    let sent = messages("nk", 2, 2);
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    let mut first = kafka.source(&[&topic], 10).unwrap();
    let n = next(&mut first, Duration::from_secs(30)).await.unwrap();
    let n1 = next(&mut first, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (n.message().meta.offset, n1.message().meta.offset),
        (Some(0), Some(1))
    );
    n1.ack().await.unwrap();
    n.nack(true).await.unwrap();
    // The nacked message comes back to the same consumer...
    let again = next(&mut first, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.message().meta.offset, Some(0));
    assert!(again.message().meta.redelivered);
    drop(again); // ...and is dropped unsettled this time.
    first.close().await;
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert!(
        committed[&0].is_none_or(|o| o <= 0),
        "committed past the unfinished offset 0: {committed:?}"
    );

    let mut second = kafka.source(&[&topic], 10).unwrap();
    let d = next(&mut second, Duration::from_secs(30))
        .await
        .expect("offset 0 again");
    assert_eq!(d.message().meta.offset, Some(0));
    assert_eq!(d.message().meta.message_id, "nk-0");
    d.ack().await.unwrap();
    let d = next(&mut second, Duration::from_secs(10))
        .await
        .expect("offset 1 again (at least once)");
    assert_eq!(d.message().meta.offset, Some(1));
    d.ack().await.unwrap();
    second.close().await;
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert_eq!(committed[&0], Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_consumer_gets_every_message_a_failing_one_left() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "errors", 3).await;
    let sent = messages("er", 300, 10);
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;

    // The failing consumer acks every third message and nacks the others, many times.
    let mut failing = kafka.source(&[&topic], 16).unwrap();
    let mut acked = BTreeSet::new();
    let mut nacks = 0;
    // Until it has failed many deliveries: a fixed time would depend on how
    // long joining the group takes on a loaded machine.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while nacks <= 200 && tokio::time::Instant::now() < until {
        let Some(d) = next(&mut failing, Duration::from_millis(500)).await else {
            continue;
        };
        let n: usize = d.message().header("seq").unwrap().parse().unwrap();
        if n.is_multiple_of(3) {
            acked.insert(d.message().meta.message_id.clone());
            d.ack().await.unwrap();
        } else {
            nacks += 1;
            d.nack(true).await.unwrap();
        }
    }
    failing.close().await;
    assert!(nacks > 200, "the consumer failed many deliveries ({nacks})");

    let mut fresh = kafka.source(&[&topic], 16).unwrap();
    let expected: BTreeSet<String> = ids(&sent).difference(&acked).cloned().collect();
    let seen = drain(&mut fresh, &expected, Duration::from_secs(60)).await;
    fresh.close().await;
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "missing after errors: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_closed_and_reopened_while_reading_lose_nothing() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "reopen", 4).await;
    let sent = messages("ro", 5_000, 50);
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;
    let expected = ids(&sent);

    let mut acked = BTreeSet::new();
    let mut rounds = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.len() < expected.len() && tokio::time::Instant::now() < until {
        rounds += 1;
        let mut source = kafka.source(&[&topic], 32).unwrap();
        let budget = 900 + (rounds * 331) % 700;
        for i in 0..budget {
            let Some(d) = next(&mut source, Duration::from_secs(5)).await else {
                break;
            };
            let id = d.message().meta.message_id.clone();
            if i % 10 == 9 {
                drop(d); // unsettled: must come back
            } else {
                d.ack().await.unwrap();
                acked.insert(id);
            }
        }
        source.close().await;
    }
    assert!(
        rounds >= 4,
        "the consumer was reopened while reading ({rounds} rounds)"
    );
    let missing: Vec<_> = expected.difference(&acked).take(10).collect();
    assert!(
        missing.is_empty(),
        "not acked after {rounds} rounds: {missing:?}..."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_advance_over_transaction_markers() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "gaps", 1).await;
    let mut config = kafka.config().producer_config();
    config.set("transactional.id", unique("tx"));
    let producer: FutureProducer = config.create().unwrap();
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let mut expected = BTreeSet::new();
    for tx in 0..4 {
        producer.begin_transaction().unwrap();
        for i in 0..5 {
            let id = format!("gap-{tx}-{i}");
            let message = Message::new(format!("{tx}/{i}")).with_message_id(id.clone());
            let headers = vec![("x-backstop-message-id", id.clone())];
            let mut record_headers = rdkafka::message::OwnedHeaders::new();
            for (k, v) in &headers {
                record_headers = record_headers.insert(rdkafka::message::Header {
                    key: k,
                    value: Some(v),
                });
            }
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(&topic)
                        .payload(&message.payload[..])
                        .headers(record_headers),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            // The third transaction is aborted: its messages are never delivered.
            if tx != 2 {
                expected.insert(id);
            }
        }
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            if tx == 2 {
                p.abort_transaction(Duration::from_secs(10))
            } else {
                p.commit_transaction(Duration::from_secs(10))
            }
        })
        .await
        .unwrap()
        .unwrap();
    }
    let end = kafka.topics().unwrap().end_offsets(&topic).await.unwrap()[&0];
    assert_eq!(end, 24, "20 records and 4 markers");

    let mut source = kafka.source(&[&topic], 4).unwrap();
    let seen = drain(&mut source, &expected, Duration::from_secs(30)).await;
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // The idle partition advances past the last marker while the source
    // runs (an idle poll, then auto commit every 200 ms). Waited for before
    // the close: the close commits what was stored without advancing idle
    // partitions, so a close right after the last record would leave the
    // commit on the last marker.
    let committed = committed_eventually(
        &kafka,
        &topic,
        &BTreeMap::from([(0, end)]),
        Duration::from_secs(10),
    )
    .await;
    source.close().await;
    assert_eq!(
        committed[&0],
        Some(end),
        "the commit reached the end of the partition"
    );
    let after_close = kafka.committed_offsets(&topic).await.unwrap();
    assert_eq!(
        after_close[&0],
        Some(end),
        "the close kept the commit at the end"
    );
}
