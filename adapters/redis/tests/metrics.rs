//! The stack's store metrics over a Redis store that cannot be reached
//! (a test binary of its own: it installs a process-wide recorder).

use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::KeySource;
use backstop::memory::MemoryBroker;
use backstop::metrics::{STORE_DURATION, STORE_ERRORS};
use backstop::runner::Source;
use backstop::{HandlerError, Message, StackBuilder, handler_fn};
use backstop_redis::{RedisConfig, RedisStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Service, ServiceExt};

#[tokio::test]
async fn store_errors_are_counted_while_the_store_is_down() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // Nothing listens on port 1: every claim fails.
    let config = RedisConfig::new("redis://127.0.0.1:1")
        .operation_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(200));
    let store = RedisStore::connect_lazy(config).unwrap();
    let broker = MemoryBroker::new();
    let mut stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(Arc::new(store), KeySource::MessageId)
        .nack_delay(Duration::ZERO)
        .build(handler_fn(|_: serde_json::Value, _| async {
            Ok::<(), HandlerError>(())
        }));
    for i in 0..3 {
        broker
            .publish_now("store-down", Message::new(format!("{i}")))
            .unwrap();
    }
    let mut source = broker.consume("store-down", 3);
    for _ in 0..3 {
        let delivery = source.next().await.unwrap().unwrap();
        let settled = stack.ready().await.unwrap().call(delivery).await;
        assert!(settled.is_ok(), "nacked for redelivery: {settled:?}");
    }

    let snapshot = snapshotter.snapshot().into_vec();
    let by_op = |name: &str| -> Vec<(String, &DebugValue)> {
        snapshot
            .iter()
            .filter(|(k, _, _, _)| k.key().name() == name)
            .filter_map(|(k, _, _, v)| {
                let op = k.key().labels().find(|l| l.key() == "op")?;
                Some((op.value().to_owned(), v))
            })
            .collect()
    };
    // Each message's first store call (its layout, then its claim) fails.
    let errors: u64 = by_op(STORE_ERRORS)
        .iter()
        .map(|(_, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum();
    assert_eq!(errors, 3, "{:?}", by_op(STORE_ERRORS));
    let timed: usize = by_op(STORE_DURATION)
        .iter()
        .map(|(_, v)| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(timed, 3, "every call is timed");
}
