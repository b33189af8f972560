//! Time to live at consume on Kafka, in discard mode: a record whose
//! timestamp is older than the stack's time to live is acked without
//! running and counted as discarded (its offset committed, nothing in the
//! DLQ); a fresh record runs. Records are produced with rdkafka directly,
//! so the test sets their timestamps.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backstop::expiry::TimeToLive;
use backstop::{Context, HandlerError, StackBuilder, handler_fn, wire};
use common::{committed_eventually, eventually, kafka, read_topic, run, shared, topic, unique};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_record_is_discarded_unrun_with_its_offset_committed() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "ttl", 1).await;
    let producer: FutureProducer = kafka.config().producer_config().create().unwrap();
    let now = SystemTime::now();
    let records = [
        ("stale", millis(now - Duration::from_secs(3600))),
        ("fresh", millis(now)),
    ];
    for (id, at) in records {
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .payload(id)
                    .timestamp(at)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: wire::MESSAGE_ID,
                        value: Some(id),
                    })),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }

    let ran = shared::<Vec<String>>();
    let r = Arc::clone(&ran);
    let stack = StackBuilder::<String>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .time_to_live(TimeToLive::max_age(Duration::from_secs(60)).discard())
        .build(handler_fn(move |id: String, _c: Context| {
            r.lock().unwrap().push(id);
            async { Ok::<_, HandlerError>(()) }
        }));
    let worker = run(kafka.source(&[&topic], 4).unwrap(), stack, 4);
    let committed = committed_eventually(
        &kafka,
        &topic,
        &BTreeMap::from([(0, 2)]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        committed.get(&0).copied().flatten(),
        Some(2),
        "both settled"
    );
    assert!(eventually(Duration::from_secs(5), || !ran.lock().unwrap().is_empty()).await);
    let summary = worker.stop().await;
    assert_eq!(*ran.lock().unwrap(), ["fresh"], "the old record never ran");
    assert_eq!((summary.handled, summary.discarded), (1, 1), "{summary}");
    assert_eq!(summary.dead_lettered, 0);
    let dlq = kafka.dlq_topic(&topic);
    let letters = read_topic(&kafka, &dlq, 1, Duration::from_secs(3)).await;
    assert!(
        letters.is_empty(),
        "discarded, not dead-lettered: {letters:?}"
    );
}
