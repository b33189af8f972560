//! A handler that routes by message type: one struct, one `Handle` impl per route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backstop::memory::MemoryBroker;
use backstop::{Context, Handle, Handler, HandlerError, Message, Payload, StackBuilder, wire};
use backstop::idempotency::MemoryStore;
use backstop::router::Routed;

#[derive(Clone, serde::Deserialize, Payload)]
struct OrderPlaced {
    amount: i64,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct OrderCancelled {}

#[derive(Handler)]
#[handler(
    routes("order.placed" = OrderPlaced, "order.cancelled" = OrderCancelled),
    retries = 1,
    idempotency = "message_id",
    source = "orders",
    concurrency = 4,
)]
struct Orders {
    handled: Arc<AtomicU32>,
}

impl Handle<OrderPlaced> for Orders {
    type Error = HandlerError;
    async fn handle(&self, order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
        if order.amount < 0 {
            return Err(HandlerError::permanent("negative amount"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Handle<OrderCancelled> for Orders {
    type Error = HandlerError;
    async fn handle(&self, _order: OrderCancelled, _ctx: Context) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn event_type(message: &Message) -> Option<&str> {
    message.header("event")
}

/// The type read by a function of the user's.
#[derive(Handler)]
#[handler(routes("order.placed" = OrderPlaced), type_from = event_type)]
struct Custom;

impl Handle<OrderPlaced> for Custom {
    type Error = HandlerError;
    async fn handle(&self, _order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let broker = MemoryBroker::new();
    let typed = |ty: &str, body: &str| Message::new(body.to_owned()).with_header("type", ty);
    broker.publish_now("orders", typed("order.placed", r#"{"amount":5}"#)).unwrap();
    broker.publish_now("orders", typed("order.cancelled", "{}")).unwrap();
    broker.publish_now("orders", typed("order.shipped", "{}")).unwrap();

    assert_eq!(Orders::CONCURRENCY, 4);
    assert_eq!(Orders::source_name(), Some("orders"));
    let dead_letter = Arc::new(broker.dead_letter_sink());
    let store = Arc::new(MemoryStore::default());
    let builder: StackBuilder<Routed> = Orders::stack_builder(dead_letter.clone(), store.clone());
    assert!(format!("{builder:?}").contains("key: MessageId"));

    let handled = Arc::new(AtomicU32::new(0));
    let orders = Orders { handled: handled.clone() };
    let summary = orders
        .runner(broker.consume("orders", 4).until_drained(), dead_letter.clone(), store)
        .run()
        .await
        .unwrap();
    assert_eq!((summary.handled, summary.dead_lettered), (2, 1));
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    let letters = broker.peek("orders.dlq");
    assert_eq!(letters[0].header(wire::ERROR_KIND), Some("unknown_type"));

    let router = Custom.router();
    let message = Message::new("{}").with_header("event", "order.placed");
    assert_eq!(router.type_of(&message), Some("order.placed"));
    let _stack = Custom.stack(dead_letter);
}
