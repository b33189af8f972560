use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(sorce = "orders", colour = "blue")]
struct Order {
    #[payload(key, primary)]
    id: String,
}

fn main() {}
