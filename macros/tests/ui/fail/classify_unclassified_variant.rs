use backstop::Classify;

#[derive(Debug, thiserror::Error, Classify)]
enum ShipError {
    #[error("unreachable")]
    #[classify(transient)]
    Unreachable,
    #[error("rejected")]
    Rejected,
    #[error("lost")]
    Lost(String),
}

#[derive(Debug, thiserror::Error, Classify)]
#[error("bad input")]
struct BadInput;

fn main() {
    // The fallback keeps the conversion, so `?` adds no errors.
    fn ship() -> Result<(), backstop::HandlerError> {
        Err(ShipError::Rejected)?
    }
    let _ = ship();
}
