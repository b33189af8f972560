//! The metrics layer: outcomes and in-flight counts, labelled stacks and
//! runners, and digest-id merges.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::testing::request;

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Runs `body` on a current-thread runtime with a debugging recorder of
/// its own; what it recorded.
fn recorded(body: impl std::future::Future<Output = ()>) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body);
    });
    snapshotter.snapshot().into_vec()
}

#[test]
fn counts_outcomes_and_tracks_in_flight() {
    let snapshot = recorded(async {
        let svc = MetricsLayer::new().layer(service_fn(|r: Request<String>| async move {
            match r.payload() {
                Ok(p) if p == "ok" => Ok(Outcome::Handled),
                Ok(p) if p == "dup" => Ok(Outcome::Duplicate),
                _ => Err(Error::Busy { key: "k".into() }),
            }
        }));
        for body in ["ok", "ok", "dup", "busy"] {
            let _ = svc.clone().oneshot(request(body)).await;
        }
    });
    let count = |outcome: &str| {
        snapshot
            .iter()
            .find(|(k, _, _, _)| {
                k.key().name() == MESSAGES_TOTAL && k.key().labels().any(|l| l.value() == outcome)
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .unwrap_or(0)
    };
    assert_eq!(count("handled"), 2);
    let histogram = snapshot.iter().any(|(k, _, _, v)| {
        k.key().name() == HANDLER_DURATION
            && k.key().labels().any(|l| l.value() == "handled")
            && matches!(v, DebugValue::Histogram(h) if h.len() == 2)
    });
    assert!(
        histogram,
        "the duration is recorded under {HANDLER_DURATION}"
    );
    assert_eq!(count("duplicate"), 1);
    assert_eq!(count("nacked"), 1);
    let gauge = snapshot
        .iter()
        .find(|(k, _, _, _)| k.key().name() == IN_FLIGHT)
        .map(|(_, _, _, v)| v);
    assert!(matches!(gauge, Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0));
}

/// A stack and its runner label every series with the consumer's source and group.
#[test]
fn a_labelled_stack_and_runner_record_source_and_group() {
    let snapshot = recorded(async {
        let broker = crate::memory::MemoryBroker::new();
        for _ in 0..3 {
            broker
                .publish_now("orders", crate::message::Message::new(r#""x""#))
                .unwrap();
        }
        let source = broker.consume("orders", 2).until_drained();
        let labels = source.metric_labels();
        let stack = crate::stack::StackBuilder::<String>::new(std::sync::Arc::new(
            broker.dead_letter_sink(),
        ))
        .metric_labels(labels.clone())
        .build(crate::handler::handler_fn(|_: String, _| async {
            Ok::<_, crate::error::HandlerError>(())
        }));
        crate::runner::Runner::new(source, stack)
            .metric_labels(labels)
            .run()
            .await
            .unwrap();
    });
    let labelled = |name: &str| {
        snapshot.iter().find(|(k, _, _, _)| {
            let key = k.key();
            key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == "source" && l.value() == "orders")
                && key
                    .labels()
                    .any(|l| l.key() == "group" && l.value() == "orders")
        })
    };
    assert!(
        matches!(
            labelled(MESSAGES_TOTAL),
            Some((_, _, _, DebugValue::Counter(3)))
        ),
        "{snapshot:?}"
    );
    assert!(labelled(HANDLER_DURATION).is_some());
    assert!(labelled(IN_FLIGHT).is_some());
    assert!(labelled(crate::breaker::BREAKER_STATE).is_some());
    // Drained and stopped: the runner is no longer ready.
    assert!(matches!(
        labelled(READY),
        Some((_, _, _, DebugValue::Gauge(g))) if g.into_inner() == 0.0
    ));
}

#[test]
fn duplicates_of_id_less_first_deliveries_count_as_digest_merges() {
    let snapshot = recorded(async {
        let svc = MetricsLayer::new().layer(service_fn(|_r: Request<String>| async {
            Ok::<_, Error>(Outcome::Duplicate)
        }));
        for redelivered in [false, false, true] {
            let message = crate::inbound::amqp(crate::inbound::AmqpDelivery {
                queue: "q".into(),
                redelivered,
                body: bytes::Bytes::from_static(b"\"same\""),
                ..crate::inbound::AmqpDelivery::default()
            });
            let request = Request::decode(message, crate::CancellationToken::new(), None);
            let _ = svc.clone().oneshot(request).await;
        }
        // A producer's id is no digest: never counted.
        let _ = svc.clone().oneshot(request("x")).await;
    });
    let merges = snapshot
        .into_iter()
        .find(|(k, _, _, _)| k.key().name() == DIGEST_ID_MERGES)
        .map(|(_, _, _, v)| v);
    assert!(
        matches!(merges, Some(DebugValue::Counter(2))),
        "two first deliveries merged, the redelivery is not a merge: {merges:?}"
    );
}
