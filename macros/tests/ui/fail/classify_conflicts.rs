use backstop::Classify;

#[derive(Debug, thiserror::Error, Classify)]
enum ShipError {
    #[error("unreachable")]
    #[classify(transient, permanent)]
    Unreachable,
    #[error("rejected")]
    #[classify(permanent, retry_after = "5s")]
    Rejected,
    #[error("slow")]
    #[classify(retry_after = "5s")]
    Slow,
    #[error("busy")]
    #[classify(transient)]
    #[classify(transient)]
    Busy,
}

fn main() {}
