//! [`PostgresError`]: what went wrong talking to PostgreSQL.

use std::time::Duration;

/// A failure of the PostgreSQL store or inbox.
///
/// Store operations hand it to backstop boxed in
/// [`StoreError::Backend`](backstop::error::StoreError::Backend), so the message is
/// deferred (nacked with backoff), never dead-lettered; the inbox turns it
/// into a transient [`HandlerError`](backstop::HandlerError).
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL (expected postgres://user:password@host:port/db): {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// The URL's TLS parameters (`sslmode`, `sslrootcert`, …) cannot be used.
    #[error("invalid PostgreSQL TLS settings: {0}")]
    InvalidTls(String),
    /// A table name is not a plain SQL identifier.
    #[error(
        "invalid table name {0:?}: use `table` or `schema.table`, letters, digits and `_`, at most 63 bytes each, not starting with a digit"
    )]
    InvalidTableName(String),
    /// The connection pool could not be built.
    #[error("could not build the connection pool: {0}")]
    BuildPool(String),
    /// No connection could be had (server down, pool exhausted, timeout).
    #[error("no PostgreSQL connection available: {}", chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL {op} failed: {}", chain(source))]
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
    /// A statement answered with rows the store cannot read.
    #[error("PostgreSQL {op} answered unexpectedly: {what}")]
    Unexpected {
        /// The operation.
        op: &'static str,
        /// What was wrong with the answer.
        what: String,
    },
    /// Creating the tables failed.
    #[error(
        "migration of {table} failed (may the role create tables in that schema?): {}",
        chain(source)
    )]
    Migrate {
        /// The table being created.
        table: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table was migrated by a newer release than this one.
    #[error(
        "{table} is at schema version {found}, newer than the {known} this release knows: upgrade this worker (an older one must not write a newer layout)"
    )]
    SchemaTooNew {
        /// The table.
        table: String,
        /// The version recorded in `backstop_schema_version`.
        found: i32,
        /// The latest version this release knows.
        known: i32,
    },
    /// The table's rows do not follow the chosen key layout
    /// ([`PostgresStore::layout`](crate::PostgresStore::layout),
    /// [`Inbox::layout`](crate::Inbox::layout)); the error says what to choose.
    #[error(transparent)]
    Layout(#[from] backstop::idempotency::LayoutError),
}

impl From<PostgresError> for backstop::error::StoreError {
    fn from(error: PostgresError) -> Self {
        match error {
            PostgresError::Layout(error) => backstop::error::StoreError::Layout(error),
            other => backstop::error::StoreError::Backend(Box::new(other)),
        }
    }
}

/// An error and its sources as one line (the driver's top-level messages,
/// such as `db error`, say little alone); a TLS failure is explained in an
/// operator's words.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    #[cfg(feature = "tls")]
    if let Some(reason) = backstop::tls::explain(error) {
        text.push_str(" (");
        text.push_str(&reason);
        text.push(')');
    }
    text
}
