//! [`PostgresError`]: what went wrong talking to PostgreSQL.

use std::time::Duration;

/// A failure of the PostgreSQL store or inbox.
///
/// Store operations hand it to backstop boxed in
/// [`StoreError::Backend`](backstop::StoreError::Backend), so the message is
/// deferred (nacked with backoff), never dead-lettered; the inbox turns it
/// into a transient [`HandlerError`](backstop::HandlerError).
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL (expected postgres://user:password@host:port/db): {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// A table name is not a plain SQL identifier.
    #[error(
        "invalid table name {0:?}: use `table` or `schema.table`, letters, digits and `_`, at most 63 bytes each, not starting with a digit"
    )]
    InvalidTableName(String),
    /// The connection pool could not be built.
    #[error("could not build the connection pool: {0}")]
    BuildPool(String),
    /// No connection could be had (server down, pool exhausted, timeout).
    #[error("no PostgreSQL connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL {op} failed: {source}")]
    Query {
        /// The operation (`claim`, `inbox insert`, `commit`, …).
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement did not finish in time; its connection was discarded.
    #[error(
        "PostgreSQL {op} did not finish within {after:?}; is the server up, or is the row locked by a long transaction?"
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The connection was closed after an earlier failure of the same unit of work.
    #[error("PostgreSQL {op} skipped: its connection was closed after an earlier failure")]
    Discarded {
        /// The operation.
        op: &'static str,
    },
    /// Creating the tables failed.
    #[error("migration of {table} failed (may the role create tables in that schema?): {source}")]
    Migrate {
        /// The table being created.
        table: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl From<PostgresError> for backstop::StoreError {
    fn from(error: PostgresError) -> Self {
        backstop::StoreError::Backend(Box::new(error))
    }
}
