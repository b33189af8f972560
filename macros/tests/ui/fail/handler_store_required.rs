use std::sync::Arc;

use backstop::{Context, Handle, Handler, HandlerError};

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {
    #[payload(key)]
    id: String,
}

#[derive(Handler)]
#[handler(payload = Order, idempotency = "key")]
struct Fulfil;

impl Handle<Order> for Fulfil {
    type Error = HandlerError;
    async fn handle(&self, _order: Order, _ctx: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let broker = backstop::memory::MemoryBroker::new();
    let _ = Fulfil.stack(Arc::new(broker.dead_letter_sink()));
}
