use backstop::Payload;

#[derive(Clone, serde::Deserialize)]
struct Customer {
    id: String,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Signup {
    #[payload(key, display)]
    customer: Customer,
}

fn main() {}
