use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {}

#[derive(Handler)]
#[handler(payload = "Order", retries = -1, concurrency = 0, idempotency = "keys", dlq = "")]
struct Fulfil;

#[derive(Handler)]
#[handler(payload = Order, retries = 5, retries = 6, backoff = "1s", timeout = "0s", concurrency)]
struct Audit;

fn main() {}
