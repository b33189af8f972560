//! Publishing and consuming: what goes in comes out, for every group.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop::wire;
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_payload_key_and_headers() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "roundtrip", 3).await;
    let publisher = kafka.publisher().unwrap();
    let sent = messages("rt", 50, 7);
    publish_all(&publisher, &topic, &sent).await;

    let mut source = kafka.source(&[&topic], 10).unwrap();
    // Until every id arrived: a redelivery (a rebalance right after the
    // topic was created) must not end the read one short.
    let mut got = Vec::new();
    let mut distinct = BTreeSet::new();
    while distinct.len() < sent.len() {
        let d = next(&mut source, Duration::from_secs(30))
            .await
            .expect("a delivery");
        distinct.insert(d.message().meta.message_id.clone());
        got.push(d.message().clone());
        d.ack().await.unwrap();
    }
    source.close().await;

    for m in &got {
        let original = sent
            .iter()
            .find(|s| s.meta.message_id == m.meta.message_id)
            .unwrap();
        assert_eq!(m.payload, original.payload);
        assert_eq!(m.key, original.key);
        assert_eq!(m.header("seq"), original.header("seq"));
        assert_eq!(
            m.header(wire::MESSAGE_ID),
            Some(original.meta.message_id.as_str())
        );
        assert_eq!(&*m.meta.source, topic);
        assert!(m.meta.partition.is_some() && m.meta.offset.is_some());
        assert!(m.meta.timestamp.is_some());
        assert_eq!(m.meta.attempt, 1);
        assert_eq!(
            m.meta.group.as_deref(),
            Some(group.as_str()),
            "the group of the idempotency keyspace"
        );
    }
    assert_eq!(ids(&got), ids(&sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_every_message() {
    let a = kafka(&unique("ga"));
    let b = kafka(&unique("gb"));
    let topic = topic(&a, "twogroups", 2).await;
    let sent = messages("tg", 40, 4);
    publish_all(&a.publisher().unwrap(), &topic, &sent).await;
    let expected = ids(&sent);
    let mut sa = a.plain_source(&[&topic], 8).unwrap();
    let mut sb = b.plain_source(&[&topic], 8).unwrap();
    let (seen_a, seen_b) = tokio::join!(
        drain(&mut sa, &expected, Duration::from_secs(30)),
        drain(&mut sb, &expected, Duration::from_secs(30))
    );
    sa.close().await;
    sb.close().await;
    assert_eq!(seen_a.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(seen_b.keys().cloned().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_an_id_get_one_from_their_position() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "noid", 1).await;
    let producer: FutureProducer = kafka.config().producer_config().create().unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(&topic).payload("plain"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let mut source = kafka.source(&[&topic], 1).unwrap();
    let d = next(&mut source, Duration::from_secs(30))
        .await
        .expect("a delivery");
    assert_eq!(d.message().meta.message_id, format!("{topic}/0/0"));
    assert_eq!(d.message().key, None);
    // The id travels on copies: a republished copy carries it as a header.
    let copy = d.message().clone();
    d.ack().await.unwrap();
    let other = unique("copy");
    kafka
        .topics()
        .unwrap()
        .create(&[spec(&other, 1)])
        .await
        .unwrap();
    kafka
        .publisher()
        .unwrap()
        .publish(&other, &copy)
        .await
        .unwrap();
    source.close().await;
    let mut reader = kafka.plain_source(&[&other], 1).unwrap();
    let again = next(&mut reader, Duration::from_secs(30))
        .await
        .expect("the copy");
    assert_eq!(again.message().meta.message_id, format!("{topic}/0/0"));
    again.ack().await.unwrap();
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_failures_say_what_went_wrong() {
    let kafka = kafka(&unique("g"));
    let publisher = kafka.publisher().unwrap();
    let missing = unique("missing");
    let started = std::time::Instant::now();
    let error = publisher
        .publish(&missing, &backstop::Message::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, backstop::publish::PublishError::MissingDestination(t) if *t == missing),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "failed within the missing-topic timeout"
    );
    let topic = topic(&kafka, "large", 1).await;
    let huge = backstop::Message::new(vec![b'x'; 2 << 20]);
    let error = publisher.publish(&topic, &huge).await.unwrap_err();
    assert!(
        matches!(error, backstop::publish::PublishError::TooLarge { size } if size == 2 << 20),
        "{error:?}"
    );
}
