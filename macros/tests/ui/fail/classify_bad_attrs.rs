use backstop::Classify;

#[derive(Debug, thiserror::Error, Classify)]
enum ShipError {
    #[error("unreachable")]
    #[classify(transiant)]
    Unreachable,
    #[error("slow")]
    #[classify(transient, retry_after = "soon")]
    Slow,
    #[error("busy")]
    #[classify(transient = true)]
    Busy,
    #[error("gone")]
    #[classify]
    Gone,
    #[error("odd")]
    #[classify()]
    Odd,
}

fn main() {}
