use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {}

#[derive(Handler)]
#[handler(payload = Order, backoff(initial = "2s", max = "1s"))]
struct Fulfil;

#[derive(Handler)]
#[handler(payload = Order, backoff(initial = "1m"))]
struct Audit;

#[derive(Handler)]
#[handler(payload = Order, backoff())]
struct Ship;

fn main() {}
