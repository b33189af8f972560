use backstop::{Handler, idempotency::MemoryStore};
use std::sync::Arc;

#[derive(Handler)]
#[handler(retries = 3, idempotency = "key")]
struct Fulfil;

#[derive(Handler)]
struct Audit;

fn main() {
    // The fallback keeps the generated API, so these calls add no errors.
    let broker = backstop::memory::MemoryBroker::new();
    let _ = Fulfil.stack(Arc::new(broker.dead_letter_sink()), Arc::new(MemoryStore::default()));
    let _ = Audit::CONCURRENCY;
}
