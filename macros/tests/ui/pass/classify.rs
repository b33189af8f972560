use std::time::Duration;

use backstop::{Classify, ErrorKind, HandlerError};

#[derive(Debug, thiserror::Error, Classify)]
enum ShipError {
    #[error("warehouse unreachable")]
    #[classify(transient)]
    Unreachable(#[source] std::io::Error),
    #[error("rate limited")]
    #[classify(transient, retry_after = "1m 30s")]
    RateLimited,
    #[error("unknown product {sku}")]
    #[classify(permanent)]
    UnknownProduct { sku: String },
}

/// A default on the enum; variants may still say otherwise.
#[derive(Debug, thiserror::Error, Classify)]
#[classify(transient)]
enum DbError {
    #[error("connection lost")]
    Lost,
    #[error("deadlock")]
    Deadlock,
    #[error("constraint violated")]
    #[classify(permanent)]
    Constraint,
}

#[derive(Debug, thiserror::Error, Classify)]
#[error("bad input")]
#[classify(permanent)]
struct BadInput;

#[derive(Debug, thiserror::Error, Classify)]
#[error("wrapped: {0}")]
#[classify(transient, retry_after = "250ms")]
struct Wrapped<E: std::error::Error + Send + Sync + 'static>(#[source] E);

#[derive(Debug, thiserror::Error, Classify)]
enum Never {}

fn retry_after(error: &HandlerError) -> Option<Duration> {
    match error {
        HandlerError::Transient { retry_after, .. } => *retry_after,
        HandlerError::Permanent { .. } | HandlerError::Unavailable { .. } => None,
    }
}

fn main() {
    let io = std::io::Error::other("connection refused");
    let verdict = HandlerError::from(ShipError::Unreachable(io));
    assert!(verdict.is_transient());
    assert_eq!(verdict.kind(), ErrorKind::Exhausted);
    assert_eq!(retry_after(&verdict), None);
    assert_eq!(backstop::error::chain(&verdict), "transient failure: warehouse unreachable: connection refused");

    let verdict = HandlerError::from(ShipError::RateLimited);
    assert_eq!(retry_after(&verdict), Some(Duration::from_secs(90)));

    let verdict = HandlerError::from(ShipError::UnknownProduct { sku: "p-1".into() });
    assert!(!verdict.is_transient());
    assert_eq!(verdict.kind(), ErrorKind::Permanent);

    assert!(HandlerError::from(DbError::Lost).is_transient());
    assert!(HandlerError::from(DbError::Deadlock).is_transient());
    assert!(!HandlerError::from(DbError::Constraint).is_transient());

    assert!(!HandlerError::from(BadInput).is_transient());
    let verdict = HandlerError::from(Wrapped(std::fmt::Error));
    assert_eq!(retry_after(&verdict), Some(Duration::from_millis(250)));

    fn _never_is_convertible(e: Never) -> HandlerError {
        e.into()
    }

    // A handler's `?` uses the conversion.
    fn ship() -> Result<(), HandlerError> {
        Err(ShipError::RateLimited)?;
        Ok(())
    }
    assert!(ship().unwrap_err().is_transient());
}
