//! The lag a source reports per partition, read by a process-wide
//! debugging recorder (a test binary of its own: the poll thread records
//! from its own thread).

mod common;

use std::time::Duration;

use backstop::Source;
use backstop::metrics::{KAFKA_LAG, KAFKA_OLDEST_UNFINISHED};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The gauge `name` of `topic`'s partition 0, as consumed by `group`.
fn gauge(snapshotter: &Snapshotter, name: &str, topic: &str, group: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, _, _, _)| {
            let has = |key: &str, value: &str| {
                k.key()
                    .labels()
                    .any(|l| l.key() == key && l.value() == value)
            };
            k.key().name() == name
                && has("source", topic)
                && has("group", group)
                && has("topic", topic)
                && has("partition", "0")
        })
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => Some(g.into_inner()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_unfinished_records_until_they_are_done() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let group = unique("g");
    let kafka = kafka(&group).configure(|c| c.metrics_interval = Duration::from_millis(100));
    let topic = topic(&kafka, "lag", 1).await;
    let sent = messages("lag", 30, 30);
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    // Ten handed out and held (a blocked handler), twenty waiting behind them.
    let mut source = kafka.source(&[&topic], 10).unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(
            next(&mut source, Duration::from_secs(30))
                .await
                .expect("a delivery"),
        );
    }
    let lag = || gauge(&snapshotter, KAFKA_LAG, &topic, &group);
    let oldest = || gauge(&snapshotter, KAFKA_OLDEST_UNFINISHED, &topic, &group);
    assert!(
        eventually(Duration::from_secs(15), || lag() == Some(30.0)).await,
        "every record is unfinished: {:?}",
        lag()
    );
    assert!(
        eventually(Duration::from_secs(10), || oldest()
            .is_some_and(|s| s > 0.0))
        .await,
        "the first offset has waited: {:?}",
        oldest()
    );

    for delivery in held {
        delivery.ack().await.unwrap();
    }
    let rest = ids(&sent[10..]);
    let seen = drain(&mut source, &rest, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), rest.len());
    assert!(
        eventually(Duration::from_secs(15), || lag() == Some(0.0)).await,
        "all done: {:?}",
        lag()
    );
    assert_eq!(oldest(), Some(0.0));
    source.close().await;
}
