use backstop::Classify;

#[derive(Debug, Classify)]
enum ShipError {
    #[classify(transient)]
    Unreachable,
}

fn main() {}
