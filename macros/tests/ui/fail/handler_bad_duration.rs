use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {}

#[derive(Handler)]
#[handler(payload = Order, timeout = "30", backoff(initial = "fast", max = 10))]
struct Fulfil;

fn main() {}
