use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Order {}

#[derive(Handler)]
#[handler(payload = Order)]
struct Fulfil;

fn main() {}
