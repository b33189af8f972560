//! The spool's metrics, recorded by a process-wide debugging recorder (a
//! test binary of its own: the spool thread and the relay record from
//! their own threads).

mod common;

use std::time::Duration;

use backstop::Message;
use backstop_spool::metrics::{BYTES, DEPTH, REFUSED, RELAY_FAILURES, RELAYED, SPOOLED};
use backstop_spool::{ReliablePublisher, SpoolConfig};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// One snapshot (taking it clears what the recorder holds).
fn snapshot(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter.snapshot().into_vec()
}

fn value(snapshot: &Snapshot, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    snapshot
        .iter()
        .find(|(k, _, _, _)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == "spool" && l.value() == "metered")
                && label.is_none_or(|(key, value)| {
                    k.key()
                        .labels()
                        .any(|l| l.key() == key && l.value() == value)
                })
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_spooled_relayed_and_failures_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = ReliablePublisher::builder(
        switch.clone(),
        SpoolConfig::new(dir.path().join("metered.spool")),
    )
    .budget(quick_budget())
    .relay(quick_relay())
    .open()
    .await
    .unwrap();
    switch.set(Mode::Down);
    for m in messages("m", 10, 2) {
        assert!(publisher.publish("q", &m).await.unwrap().is_spooled());
    }
    let s = snapshot(&snapshotter);
    assert_eq!(value(&s, DEPTH, None), Some(10.0));
    assert!(value(&s, BYTES, None).unwrap() > 0.0);
    assert_eq!(value(&s, SPOOLED, None), Some(10.0));
    // The relay probes the broker and fails (counted across snapshots).
    let mut failures = value(&s, RELAY_FAILURES, Some(("reason", "unavailable"))).unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(5), || {
            failures += value(
                &snapshot(&snapshotter),
                RELAY_FAILURES,
                Some(("reason", "unavailable")),
            )
            .unwrap_or(0.0);
            failures >= 1.0
        })
        .await
    );

    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let s = snapshot(&snapshotter);
    assert_eq!(value(&s, DEPTH, None), Some(0.0));
    assert_eq!(value(&s, BYTES, None), Some(0.0));
    // Counted right after the removal the flush saw.
    let mut relayed = value(&s, RELAYED, None).unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(5), || {
            relayed += value(&snapshot(&snapshotter), RELAYED, None).unwrap_or(0.0);
            relayed >= 10.0
        })
        .await
    );
    assert_eq!(relayed, 10.0);

    // A spooled message the broker refuses for good is counted as refused.
    switch.set(Mode::Down);
    let big = Message::new(vec![b'x'; 2_048]).with_message_id("big");
    assert!(publisher.publish("q", &big).await.unwrap().is_spooled());
    switch
        .max_payload
        .store(1_024, std::sync::atomic::Ordering::Relaxed);
    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let mut refused = 0.0;
    assert!(
        eventually(Duration::from_secs(5), || {
            refused += value(
                &snapshot(&snapshotter),
                REFUSED,
                Some(("reason", "too_large")),
            )
            .unwrap_or(0.0);
            refused >= 1.0
        })
        .await
    );
}
