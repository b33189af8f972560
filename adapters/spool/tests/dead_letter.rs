//! The opt-in spooling DLQ sink: when the DLQ broker is down, a dead letter
//! is spooled durably and the source is acked; it reaches the DLQ later.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backstop::dead_letter::DeadLetterSink;
use backstop::error::SinkError;
use backstop::memory::{MemoryBroker, MemoryDeadLetterSink};
use backstop::publish::PublishError;
use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn, wire};
use backstop_spool::{SpoolConfig, SpoolingDeadLetterSink};
use common::*;

/// The in-memory DLQ writer, switched off at will.
#[derive(Clone)]
struct FlakyDlq {
    inner: MemoryDeadLetterSink,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl DeadLetterSink for FlakyDlq {
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(SinkError::Publish {
                destination: destination.unwrap_or("dlq").to_owned(),
                source: PublishError::Unavailable("connection refused".into()),
            });
        }
        self.inner.dead_letter(letter, destination).await
    }
}

async fn always_fails(_v: serde_json::Value, _ctx: Context) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("no such customer"))
}

#[tokio::test]
async fn letters_are_spooled_while_the_dlq_is_down_and_the_source_is_acked() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let down = Arc::new(AtomicBool::new(true));
    let flaky = FlakyDlq {
        inner: broker.dead_letter_sink(),
        down: Arc::clone(&down),
    };
    let sink =
        SpoolingDeadLetterSink::builder(flaky, SpoolConfig::new(dir.path().join("dlq.spool")))
            .budget(quick_budget())
            .relay(quick_relay())
            .open()
            .await
            .unwrap();
    for i in 0..20 {
        broker
            .publish_now(
                "orders",
                Message::new(format!(r#"{{"n":{i}}}"#)).with_message_id(format!("o-{i}")),
            )
            .unwrap();
    }
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(sink.clone()))
        .build(handler_fn(always_fails));
    let summary = Runner::new(broker.consume("orders", 4).until_drained(), stack)
        .concurrency(4)
        .run()
        .await
        .unwrap();
    assert_eq!(summary.dead_lettered, 20, "{summary}");
    assert_eq!(summary.nacked, 0, "{summary}");
    let orders = broker.stats("orders");
    assert_eq!(
        (orders.ready, orders.unacked),
        (0, 0),
        "the source was acked"
    );
    assert_eq!(sink.spool().len(), 20);
    assert_eq!(broker.stats("orders.dlq").ready, 0);

    down.store(false, Ordering::Relaxed);
    sink.flush(Duration::from_secs(10)).await.unwrap();
    let letters = broker.peek("orders.dlq");
    assert_eq!(letters.len(), 20);
    let ids = (0..20).map(|i| format!("o-{i}"));
    assert_eq!(
        missing(ids.collect::<Vec<_>>().iter().map(String::as_str), &letters),
        Vec::<String>::new()
    );
    assert!(
        letters
            .iter()
            .all(|l| l.header(wire::ERROR_KIND) == Some("permanent"))
    );
    assert!(
        letters
            .iter()
            .all(|l| l.header(wire::ORIGINAL_SOURCE) == Some("orders"))
    );
}

#[tokio::test]
async fn with_the_dlq_up_letters_go_straight_through() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let sink = SpoolingDeadLetterSink::open(
        broker.dead_letter_sink(),
        SpoolConfig::new(dir.path().join("dlq.spool")),
    )
    .await
    .unwrap();
    let mut letter = Message::new("x").with_message_id("l-1");
    letter.meta.source = "billing".into();
    sink.dead_letter(letter, None).await.unwrap();
    assert!(sink.spool().is_empty());
    assert_eq!(broker.stats("billing.dlq").ready, 1);
}

#[tokio::test]
async fn a_letter_the_sink_refuses_for_good_keeps_the_source_unacked() {
    #[derive(Clone)]
    struct Misconfigured;
    #[async_trait::async_trait]
    impl DeadLetterSink for Misconfigured {
        async fn dead_letter(&self, _l: Message, _d: Option<&str>) -> Result<(), SinkError> {
            Err(SinkError::Unsupported("no DLQ configured".into()))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = SpoolingDeadLetterSink::open(
        Misconfigured,
        SpoolConfig::new(dir.path().join("dlq.spool")),
    )
    .await
    .unwrap();
    let err = sink.dead_letter(Message::new("x"), None).await.unwrap_err();
    assert!(matches!(err, SinkError::Unsupported(_)), "{err}");
    assert!(sink.spool().is_empty());
}
