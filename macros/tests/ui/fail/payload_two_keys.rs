use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
struct Transfer {
    #[payload(key)]
    from: String,
    #[payload(key)]
    to: String,
}

fn main() {
    // The fallback impl keeps uses of the trait free of further errors.
    let _ = Transfer::decode(b"{}");
}
