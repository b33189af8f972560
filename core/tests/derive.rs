//! The derives at work: handlers configured by `#[derive(Handler)]` run on the
//! in-memory broker with exactly the retries, timeout, deduplication and
//! dead-letter destination their attributes say.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::memory::MemoryBroker;
use backstop::{Classify, Context, Handle, Handler, Message, Payload, Summary, wire};

#[derive(Clone, Debug, serde::Deserialize, Payload)]
#[payload(source = "orders", dlq = "orders.dlq")]
struct OrderPlaced {
    #[payload(key)]
    order_id: String,
}

#[derive(Debug, thiserror::Error, Classify)]
enum ShipError {
    #[error("warehouse unreachable")]
    #[classify(transient)]
    Unreachable,
    #[error("unknown product")]
    #[classify(permanent)]
    UnknownProduct,
}

/// Counts the calls of a handler.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicU32>);

impl Calls {
    fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn order(id: &str) -> Message {
    Message::new(format!(r#"{{"order_id":"{id}"}}"#))
}

fn error_kinds(broker: &MemoryBroker, queue: &str) -> Vec<String> {
    broker
        .peek(queue)
        .iter()
        .map(|m| m.header(wire::ERROR_KIND).unwrap_or("<none>").to_owned())
        .collect()
}

/// Fails transiently on every attempt.
#[derive(Handler)]
#[handler(payload = OrderPlaced, retries = 2, backoff(initial = "1ms", max = "4ms"))]
struct AlwaysUnreachable {
    calls: Calls,
}

impl Handle<OrderPlaced> for AlwaysUnreachable {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        self.calls.add();
        Err(ShipError::Unreachable)
    }
}

#[tokio::test(start_paused = true)]
async fn configured_retries_bound_the_attempts_then_dead_letter_as_exhausted() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    let calls = Calls::default();
    let handler = AlwaysUnreachable {
        calls: calls.clone(),
    };
    let summary = handler
        .runner(
            broker.consume("orders", 1).until_drained(),
            Arc::new(broker.dead_letter_sink()),
        )
        .run()
        .await
        .unwrap();
    assert_eq!(calls.count(), 3, "retries = 2 is three attempts");
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(error_kinds(&broker, "orders.dlq"), ["exhausted"]);
    assert_eq!(broker.stats("orders").ready, 0);
}

/// Fails permanently (through `Classify`).
#[derive(Handler)]
#[handler(payload = OrderPlaced, retries = 5, backoff(initial = "1ms", max = "4ms"))]
struct UnknownProduct {
    calls: Calls,
}

impl Handle<OrderPlaced> for UnknownProduct {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        self.calls.add();
        Err(ShipError::UnknownProduct)
    }
}

#[tokio::test(start_paused = true)]
async fn a_permanent_classification_dead_letters_without_retry() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    let calls = Calls::default();
    let summary = UnknownProduct {
        calls: calls.clone(),
    }
    .runner(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 1);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(error_kinds(&broker, "orders.dlq"), ["permanent"]);
}

/// Takes far longer than its timeout.
#[derive(Handler)]
#[handler(payload = OrderPlaced, retries = 1, backoff(initial = "1ms", max = "1ms"), timeout = "50ms")]
struct Slow {
    calls: Calls,
}

impl Handle<OrderPlaced> for Slow {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        self.calls.add();
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_configured_timeout_fails_each_attempt_and_dead_letters_as_timeout() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    let calls = Calls::default();
    let started = tokio::time::Instant::now();
    let summary = Slow {
        calls: calls.clone(),
    }
    .runner(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 2, "retries = 1 is two attempts");
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(error_kinds(&broker, "orders.dlq"), ["timeout"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "each attempt was cut at 50ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_configuration_overrides_only_the_attributes_it_names() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    let calls = Calls::default();
    let started = tokio::time::Instant::now();
    // Attempts from the configuration; the timeout, backoff and DLQ stay the attributes'.
    let settings = backstop::settings::Settings {
        max_attempts: Some(4),
        ..Default::default()
    };
    let summary = Slow {
        calls: calls.clone(),
    }
    .runner_with(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
        &settings,
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 4, "max_attempts = 4 from the configuration");
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(error_kinds(&broker, "orders.dlq"), ["timeout"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "each attempt still cut at the attribute's 50ms"
    );
}

/// Deduplicates by the payload's key.
#[derive(Handler)]
#[handler(payload = OrderPlaced, idempotency = "key", concurrency = 4)]
struct ShipOnce {
    calls: Calls,
}

impl Handle<OrderPlaced> for ShipOnce {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        self.calls.add();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_payload_key_runs_the_handler_once() {
    let broker = MemoryBroker::new();
    // Two copies of o-1 with different message ids: only the payload key ties them.
    broker
        .publish_now("orders", order("o-1").with_message_id("m-1"))
        .unwrap();
    broker
        .publish_now("orders", order("o-2").with_message_id("m-2"))
        .unwrap();
    broker
        .publish_now("orders", order("o-1").with_message_id("m-3"))
        .unwrap();
    let calls = Calls::default();
    let store = Arc::new(MemoryStore::default());
    assert_eq!(ShipOnce::CONCURRENCY, 4);
    let summary = ShipOnce {
        calls: calls.clone(),
    }
    .runner(
        broker
            .consume(ShipOnce::source_name().unwrap(), 1)
            .until_drained(),
        Arc::new(broker.dead_letter_sink()),
        store,
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 2, "o-1 once, o-2 once");
    assert_eq!(
        summary,
        Summary {
            received: 3,
            handled: 2,
            duplicates: 1,
            ..Summary::default()
        }
    );
}

/// Deduplicates by message id.
#[derive(Handler)]
#[handler(payload = OrderPlaced, idempotency = "message_id")]
struct ShipOncePerMessage {
    calls: Calls,
}

impl Handle<OrderPlaced> for ShipOncePerMessage {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        self.calls.add();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn message_id_idempotency_ignores_the_payload_key() {
    let broker = MemoryBroker::new();
    broker
        .publish_now("orders", order("o-1").with_message_id("m-1"))
        .unwrap();
    broker
        .publish_now("orders", order("o-1").with_message_id("m-2"))
        .unwrap();
    broker
        .publish_now("orders", order("o-1").with_message_id("m-1"))
        .unwrap();
    let calls = Calls::default();
    let summary = ShipOncePerMessage {
        calls: calls.clone(),
    }
    .runner(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
        Arc::new(MemoryStore::default()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 2, "m-1 once, m-2 once");
    assert_eq!(summary.duplicates, 1);
}

/// Sends its dead letters somewhere else than the payload's default.
#[derive(Handler)]
#[handler(payload = OrderPlaced, retries = 0, dlq = "orders.poison")]
struct Picky;

impl Handle<OrderPlaced> for Picky {
    type Error = ShipError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), ShipError> {
        Err(ShipError::UnknownProduct)
    }
}

#[tokio::test(start_paused = true)]
async fn the_handler_dlq_overrides_the_payload_default() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    let summary = Picky
        .runner(
            broker.consume("orders", 1).until_drained(),
            Arc::new(broker.dead_letter_sink()),
        )
        .run()
        .await
        .unwrap();
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(error_kinds(&broker, "orders.poison"), ["permanent"]);
    assert_eq!(
        broker.stats("orders.dlq").ready,
        0,
        "the payload's dlq is overridden"
    );
    let letter = &broker.peek("orders.poison")[0];
    assert_eq!(
        letter.payload,
        order("o-1").payload,
        "the letter carries the body unchanged"
    );
}

#[tokio::test(start_paused = true)]
async fn without_an_override_letters_go_to_the_payload_dlq() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("o-1")).unwrap();
    UnknownProduct {
        calls: Calls::default(),
    }
    .runner(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(broker.stats("orders.dlq").ready, 1);
    assert_eq!(broker.stats("orders.poison").ready, 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_decode_is_dead_lettered_as_decode_without_calling_the_handler() {
    let broker = MemoryBroker::new();
    broker
        .publish_now("orders", Message::new("not json"))
        .unwrap();
    let calls = Calls::default();
    AlwaysUnreachable {
        calls: calls.clone(),
    }
    .runner(
        broker.consume("orders", 1).until_drained(),
        Arc::new(broker.dead_letter_sink()),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(calls.count(), 0);
    assert_eq!(error_kinds(&broker, "orders.dlq"), ["decode"]);
}
