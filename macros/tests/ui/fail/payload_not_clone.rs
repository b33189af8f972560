use backstop::Payload;

#[derive(serde::Deserialize, Payload)]
struct Refund {
    #[payload(key)]
    id: String,
}

fn main() {}
