use backstop::Payload;

#[derive(Clone, Payload)]
struct Order {
    #[payload(key)]
    id: String,
}

fn main() {}
