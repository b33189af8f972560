use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(key)]
struct Order {
    #[payload(display)]
    id: String,
    #[payload(source = "orders")]
    amount: u64,
}

#[derive(Clone, serde::Deserialize, Payload)]
enum Event {
    #[payload(dlq = "events.dlq")]
    Created {
        #[payload(key)]
        id: String,
    },
}

fn main() {}
