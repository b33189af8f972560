//! The transactional inbox: exactly-once effects on top of at-least-once
//! delivery, for handlers whose effects live in PostgreSQL.
//!
//! [`InboxLayer`] goes innermost ([`StackBuilder::innermost`](backstop::StackBuilder::innermost)),
//! so it wraps each attempt of the handler. Per attempt it takes a pooled
//! connection, runs `BEGIN`, and inserts the message's row into the inbox
//! table (`INSERT … ON CONFLICT DO NOTHING`, keyed by consumer and
//! idempotency key):
//!
//! - the row existed: the message's effects were committed before; the
//!   handler is skipped and the message is acked;
//! - the row is new: the handler runs with the open transaction in its
//!   [`Context`](backstop::Context) as an [`InboxTx`] and writes its effects
//!   through it; on success the transaction commits the effects and the inbox
//!   row together; on an error, a panic, a timeout or a dropped future
//!   (crash, shutdown) both are rolled back.
//!
//! So a crash before the commit leaves neither (the broker redelivers and
//! the handler runs again), and a redelivery after the commit finds the row
//! and is skipped. A concurrent copy of the same message waits on the row
//! lock of the first one's insert and is skipped if it commits.
//!
//! Keys follow [`KeySource`] (default: the payload's key, else the message
//! id); a message without a key still runs in a transaction, without
//! deduplication. A connection whose transaction was interrupted is closed,
//! never returned to the pool, so the server rolls it back.
//!
//! Failures of the inbox itself (no connection, `BEGIN` or the inbox insert
//! failed) are transient [`HandlerError`](backstop::HandlerError)s: the
//! attempt is retried with backoff. A failed `COMMIT` is classified like
//! the handler's own queries ([`InboxError::is_permanent`]).

mod layer;
mod tx;

pub use self::layer::{InboxLayer, InboxService};
pub use self::tx::{InboxError, InboxTx, TxClient};

use std::sync::Arc;
use std::time::Duration;

use backstop::KeySource;
use backstop::idempotency::Key;
use deadpool_postgres::Pool;

use crate::conn::Conn;
use crate::{PostgresError, TableName};

/// The default inbox table.
pub const DEFAULT_INBOX_TABLE: &str = "backstop_inbox";

/// How many rows one purge statement deletes at most.
const PURGE_BATCH: i64 = 10_000;

/// The inbox's SQL for one table.
#[derive(Debug)]
struct Statements {
    migrate: String,
    insert: String,
    contains: String,
    purge: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table;
        let index = table.derived("processed_at_idx");
        Statements {
            migrate: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    consumer     text        NOT NULL,
    key          text        NOT NULL,
    message_id   text        NOT NULL,
    source       text        NOT NULL,
    attempt      integer     NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, key)
);
CREATE INDEX IF NOT EXISTS {index} ON {t} (processed_at);
"
            ),
            insert: format!(
                "INSERT INTO {t} (consumer, key, message_id, source, attempt) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (consumer, key) DO NOTHING"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE consumer = $1 AND key = $2"),
            purge: format!(
                "DELETE FROM {t} WHERE consumer = $1 AND key IN (
    SELECT key FROM {t} WHERE consumer = $1 AND processed_at < now() - $2::bigint * interval '1 millisecond'
    LIMIT $3::bigint)"
            ),
        }
    }
}

/// A transactional inbox table and how messages are keyed into it; see the
/// [module docs](self). Build the stack's layer with [`Inbox::layer`].
#[derive(Clone)]
pub struct Inbox {
    pool: Pool,
    table: TableName,
    consumer: String,
    key: KeySource,
    timeout: Duration,
    sql: Arc<Statements>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.table.to_string())
            .field("consumer", &self.consumer)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox on `pool`: table [`DEFAULT_INBOX_TABLE`], consumer `""`, keys from
    /// the payload else the message id, 5 s for each of its own statements.
    /// Call [`migrate`](Self::migrate) once before use.
    pub fn new(pool: Pool) -> Self {
        let table = TableName::known(DEFAULT_INBOX_TABLE);
        Inbox {
            pool,
            sql: Arc::new(Statements::new(&table)),
            table,
            consumer: String::new(),
            key: KeySource::PayloadOrMessageId,
            timeout: Duration::from_secs(5),
        }
    }

    /// Uses table `name` (`table` or `schema.table`) instead of the default.
    pub fn with_table(mut self, name: &str) -> Result<Self, PostgresError> {
        self.table = TableName::new(name)?;
        self.sql = Arc::new(Statements::new(&self.table));
        Ok(self)
    }

    /// Names the consumer: consumers sharing a table deduplicate apart.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = crate::column::text(&name.into()).into_owned();
        self
    }

    /// Takes keys from `key` (see [`KeySource`]).
    #[must_use]
    pub fn keyed_by(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Bounds each of the inbox's own steps (connection checkout, `BEGIN`,
    /// the inbox insert, `COMMIT`, `ROLLBACK`). The handler's queries are
    /// bounded by the stack's [`timeout`](backstop::StackBuilder::timeout).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The table's name, as used in SQL.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The pool the inbox takes connections from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQL that creates the inbox table and its index (idempotent).
    pub fn migration_sql(&self) -> &str {
        &self.sql.migrate
    }

    /// Creates the inbox table and its index if they do not exist.
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        crate::migrate::run(&self.pool, &self.table, &self.sql.migrate, self.timeout).await
    }

    /// True if a message with `key` was committed by this consumer.
    pub async fn contains(&self, key: &Key) -> Result<bool, PostgresError> {
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let rows = conn
            .query(
                "inbox lookup",
                self.timeout,
                &self.sql.contains,
                &[&self.consumer, &crate::column::key(key)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Deletes this consumer's rows processed more than `age` ago; returns
    /// how many. Keep `age` longer than any redelivery or replay you want
    /// skipped: a message whose row is gone runs again.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64, PostgresError> {
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let mut purged = 0;
        loop {
            let n = conn
                .execute(
                    "inbox purge",
                    self.timeout,
                    &self.sql.purge,
                    &[&self.consumer, &age, &PURGE_BATCH],
                )
                .await?;
            purged += n;
            if n < PURGE_BATCH.unsigned_abs() {
                return Ok(purged);
            }
        }
    }

    /// The layer for [`StackBuilder::innermost`](backstop::StackBuilder::innermost).
    pub fn layer(&self) -> InboxLayer {
        InboxLayer::new(self.clone())
    }
}
