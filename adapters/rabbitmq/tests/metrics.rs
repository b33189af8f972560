//! The depths a source reports (its queue, its DLQ, its delay queues),
//! read by a process-wide debugging recorder (a test binary of its own).

mod common;

use std::time::Duration;

use backstop::metrics::{DLQ_DEPTH, QUEUE_DEPTH, RETRY_DEPTH};
use backstop_rabbitmq::Topology;
use backstop_rabbitmq::lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A gauge of `source`'s, by name, with one more label.
fn gauge(snapshotter: &Snapshotter, name: &str, source: &str, label: (&str, &str)) -> Option<f64> {
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
                && has("source", source)
                && has("group", source)
                && has(label.0, label.1)
        })
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => Some(g.into_inner()),
            _ => None,
        })
}

/// Waits until the gauge reads `expected` (at most 10 s); panics with the
/// last reading if it never does.
async fn reaches(
    snapshotter: &Snapshotter,
    name: &str,
    source: &str,
    label: (&str, &str),
    expected: f64,
) {
    let read = || gauge(snapshotter, name, source, label);
    let reached = eventually(Duration::from_secs(10), || read() == Some(expected)).await;
    assert!(reached, "{name} {label:?}: {:?}, not {expected}", read());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depths_of_the_queue_its_dlq_and_its_delay_queues_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let rabbit = rabbit().await;
    let topology = Topology::quorum(unique("depths")).retry_tiers([Duration::from_secs(60)]);
    rabbit.declare(&topology).await.expect("declare");
    let queue = topology.queue().to_owned();
    let dlq = topology.dlq();
    let tier = &topology.tiers()[0];
    let delay_queue = tier.queue_for(&queue);
    let publisher = rabbit.publisher();
    publish_numbered(&publisher, &queue, "waiting", 5).await;
    publish_numbered(&publisher, &dlq, "letter", 6).await;
    publish_numbered(&publisher, &delay_queue, "retry", 3).await;

    // Prefetch 1 and nothing taken: one message is with the consumer
    // (unacked), four wait in the queue.
    let source = rabbit
        .source(&queue, 1)
        .await
        .expect("consume")
        .depth_interval(Duration::from_millis(100));
    reaches(&snapshotter, QUEUE_DEPTH, &queue, ("queue", &queue), 4.0).await;
    reaches(&snapshotter, DLQ_DEPTH, &queue, ("dlq", &dlq), 6.0).await;
    reaches(
        &snapshotter,
        RETRY_DEPTH,
        &queue,
        ("tier", tier.name()),
        3.0,
    )
    .await;

    // Redrive two letters as the DLQ tool does: a confirmed copy to the
    // source queue, then the letter acked off the DLQ.
    let channel = rabbit.channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    for _ in 0..2 {
        let letter = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
            .expect("a letter");
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &letter.delivery.data,
                letter.delivery.properties.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        letter
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    reaches(&snapshotter, DLQ_DEPTH, &queue, ("dlq", &dlq), 4.0).await;
    reaches(&snapshotter, QUEUE_DEPTH, &queue, ("queue", &queue), 6.0).await;
    let _ = channel.close(200, "OK".into()).await;
    drop(source);
    cleanup(&rabbit, &topology).await;
}
