use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(source = orders, dlq = "")]
#[payload(source = "orders", source = "orders.eu")]
struct Order {
    #[payload(key = "id")]
    id: String,
}

fn main() {}
