use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {}

#[derive(Handler)]
#[handler(payload = Order, retry = 5, timout = "1s", backoff(start = "1ms"), deadline = "5s")]
struct Fulfil;

fn main() {}
