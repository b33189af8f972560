//! Store metrics: every call timed, failures counted by operation.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use super::*;
use crate::idempotency::MemoryStore;
use crate::idempotency::tests::DownStore as Down;
use crate::idempotency::{Held, Key as StoreKey, Store};

fn value<'a>(
    snapshot: &'a [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    op: &str,
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(k, _, _, _)| {
            k.key().name() == name && k.key().labels().any(|l| l.key() == "op" && l.value() == op)
        })
        .map(|(_, _, _, v)| v)
}

#[test]
fn every_call_is_timed_and_failures_are_counted_by_operation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let key = StoreKey::new("k");
            let up = Measured::new(Arc::new(MemoryStore::default()));
            let fence = up
                .claim(&key, "w", Duration::from_secs(5), 0)
                .await
                .unwrap()
                .fence()
                .unwrap();
            assert!(up.complete(&key, fence).await.unwrap());
            let down = Measured::new(Arc::new(Down));
            for _ in 0..3 {
                assert!(
                    down.claim(&key, "w", Duration::from_secs(5), 0)
                        .await
                        .is_err()
                );
            }
            let held = [Held { key: &key, fence }, Held { key: &key, fence }];
            assert_eq!(
                down.renew_many(&held, Duration::from_secs(5)).await.len(),
                2
            );
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    assert!(
        matches!(value(&snapshot, STORE_DURATION, "claim"), Some(DebugValue::Histogram(h)) if h.len() == 4)
    );
    assert!(
        matches!(value(&snapshot, STORE_DURATION, "complete"), Some(DebugValue::Histogram(h)) if h.len() == 1)
    );
    assert_eq!(
        value(&snapshot, STORE_ERRORS, "claim"),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        value(&snapshot, STORE_ERRORS, "complete"),
        Some(&DebugValue::Counter(0)),
        "no failure: exported at 0"
    );
    assert!(
        matches!(value(&snapshot, STORE_DURATION, "renew_many"), Some(DebugValue::Histogram(h)) if h.len() == 1),
        "a batch is one call"
    );
    assert_eq!(
        value(&snapshot, STORE_ERRORS, "renew_many"),
        Some(&DebugValue::Counter(2)),
        "each failed item"
    );
}
