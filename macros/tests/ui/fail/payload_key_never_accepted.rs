use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
struct Optional {
    #[payload(key)]
    id: Option<String>,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Many {
    #[payload(key)]
    ids: Vec<u64>,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Pair {
    #[payload(key)]
    id: (String, u32),
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Digest {
    #[payload(key)]
    sha: [u8; 32],
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Price {
    #[payload(key)]
    amount: f64,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Flag {
    #[payload(key, display)]
    on: bool,
}

fn main() {}
