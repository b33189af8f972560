use backstop::Handler;

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Placed {}

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Cancelled {}

fn event_type(message: &backstop::Message) -> Option<&str> {
    message.header("event")
}

#[derive(Handler)]
#[handler(payload = Placed, routes("order.placed" = Placed))]
struct Both;

#[derive(Handler)]
#[handler(routes("order.placed" = Placed, "order.placed" = Cancelled, "" = Cancelled), idempotency = "key")]
struct Twice;

#[derive(Handler)]
#[handler(routes(), type_from = "event_type")]
struct Empty;

#[derive(Handler)]
#[handler(routes(order_placed = Placed))]
struct Unquoted;

#[derive(Handler)]
#[handler(routes("order.placed"), concurrency = 2)]
struct NoType;

#[derive(Handler)]
#[handler(payload = Placed, type_from = event_type)]
struct NoRoutes;

#[derive(Handler)]
#[handler(routes = "order.placed")]
struct Assigned;

fn main() {}
