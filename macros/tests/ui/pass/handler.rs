use std::sync::Arc;

use backstop::memory::MemoryBroker;
use backstop::{Context, Handle, Handler, HandlerError, Payload, RetryPolicy, Stack, StackBuilder};
use backstop::idempotency::MemoryStore;

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(source = "orders", dlq = "orders.dlq")]
struct Order {
    #[payload(key)]
    id: String,
}

macro_rules! handles_orders {
    ($($handler:ty),*) => {$(
        impl Handle<Order> for $handler {
            type Error = HandlerError;
            async fn handle(&self, _order: Order, _ctx: Context) -> Result<(), HandlerError> {
                Ok(())
            }
        }
    )*};
}

/// Defaults everywhere.
#[derive(Handler)]
#[handler(payload = Order)]
struct Plain;

/// Everything set.
#[derive(Handler)]
#[handler(
    payload = Order,
    retries = 5,
    backoff(initial = "100ms", max = "10s"),
    timeout = "30s",
    idempotency = "key",
    concurrency = 32,
    dlq = "orders.failed",
    source = "orders.eu",
)]
struct Full;

#[derive(Handler)]
#[handler(payload = Order, idempotency = "message_id", backoff(max = "1m"))]
#[handler(retries = 0)]
struct ById;

#[derive(Handler)]
#[handler(payload = Order, idempotency = "key_or_message_id", backoff(initial = "1s"))]
struct Either;

#[derive(Handler)]
#[handler(payload = Order, idempotency = "none")]
struct Stateful {
    #[allow(dead_code)]
    seen: std::sync::atomic::AtomicU64,
}

handles_orders!(Plain, Full, ById, Either, Stateful);

#[derive(Handler)]
#[handler(payload = Order, concurrency = 4)]
struct Generic<T: Send + Sync + 'static> {
    #[allow(dead_code)]
    state: T,
}

impl<T: Send + Sync + 'static> Handle<Order> for Generic<T> {
    type Error = HandlerError;
    async fn handle(&self, _order: Order, _ctx: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let broker = MemoryBroker::new();
    let dead_letter = Arc::new(broker.dead_letter_sink());
    let store = Arc::new(MemoryStore::default());

    assert_eq!(Plain::CONCURRENCY, 1);
    assert_eq!(Plain::source_name(), Some("orders"));
    let _: Stack = Plain.stack(dead_letter.clone());
    let _runner = Plain.runner(broker.consume("orders", 1), dead_letter.clone());

    assert_eq!(Full::CONCURRENCY, 32);
    assert_eq!(Full::source_name(), Some("orders.eu"));
    let builder: StackBuilder<Order> = Full::stack_builder(dead_letter.clone(), store.clone());
    let debug = format!("{builder:?}");
    assert!(debug.contains("timeout: Some(30s)"), "{debug}");
    assert!(debug.contains("dead_letter_to: Some(\"orders.failed\")"), "{debug}");
    assert!(debug.contains(&format!("{:?}", RetryPolicy::retries(5))), "{debug}");
    assert!(debug.contains("key: Payload"), "{debug}");
    let _: Stack = Full.stack(dead_letter.clone(), store.clone());
    let _runner = Full.runner(broker.consume("orders.eu", 32), dead_letter.clone(), store.clone());

    let debug = format!("{:?}", ById::stack_builder(dead_letter.clone(), store.clone()));
    let policy = RetryPolicy::none().backoff(std::time::Duration::from_millis(100), std::time::Duration::from_secs(60));
    assert!(debug.contains(&format!("{policy:?}")), "{debug}");
    assert!(debug.contains("key: MessageId"), "{debug}");
    assert!(debug.contains("dead_letter_to: Some(\"orders.dlq\")"), "{debug}");
    let _: Stack = ById.stack(dead_letter.clone(), store.clone());

    let debug = format!("{:?}", Either::stack_builder(dead_letter.clone(), store.clone()));
    assert!(debug.contains("key: PayloadOrMessageId"), "{debug}");
    assert!(debug.contains("max_delay: 10s"), "{debug}");

    let stateful = Stateful { seen: Default::default() };
    let debug = format!("{:?}", Stateful::stack_builder(dead_letter.clone()));
    assert!(debug.contains("idempotency: None"), "{debug}");
    let _: Stack = stateful.stack(dead_letter.clone());

    assert_eq!(Generic::<String>::CONCURRENCY, 4);
    let _: Stack = Generic { state: String::new() }.stack(dead_letter);
}
