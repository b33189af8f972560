//! [`InboxTx`]: the open transaction a handler writes its effects through.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backstop::idempotency::Key;
use backstop::{Context, HandlerError};
use deadpool_postgres::{ClientWrapper, Object};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::PostgresError;
use crate::conn::Conn;

/// A query through an [`InboxTx`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The handler's context has no inbox transaction.
    #[error(
        "no inbox transaction in this context: add the inbox with StackBuilder::around_attempt(inbox.layer())"
    )]
    Missing,
    /// The transaction was committed or rolled back already.
    #[error(
        "the inbox transaction is over (committed, rolled back or its connection lost): use it only while the handler runs"
    )]
    Finished,
    /// The statement failed.
    #[error("query in the inbox transaction failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The run lost its idempotency lease (it was taken over after it
    /// expired): its transaction was rolled back, and the message is left
    /// for redelivery.
    #[error(
        "the idempotency lease on {key} (fence {fence}) was lost before the commit: rolled back, the newer run's effects count"
    )]
    LeaseLost {
        /// The key as stored.
        key: String,
        /// The lost lease's fencing token.
        fence: u64,
    },
    /// A statement in the transaction failed (or was abandoned after a
    /// timeout), the handler returned success anyway, and the transaction
    /// could not commit (PostgreSQL answers `COMMIT` of an aborted
    /// transaction with a silent rollback): it was rolled back, nothing
    /// committed; the message is retried, or dead-lettered when the failure
    /// behind it cannot pass on a retry (`permanent`).
    #[error(
        "a statement in the inbox transaction failed and the handler returned success anyway; \
         the transaction was rolled back (nothing committed): {source}"
    )]
    Aborted {
        /// Why the commit was refused.
        #[source]
        source: PostgresError,
        /// The latest failure noted in the transaction cannot pass on a
        /// retry (a constraint, a value the database refuses).
        permanent: bool,
    },
}

impl InboxError {
    /// The SQLSTATE of a database error, if this is one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            InboxError::Query(error) => error.code(),
            _ => None,
        }
    }

    /// True for errors a retry cannot fix: a missing inbox, data exceptions
    /// (SQLSTATE class 22), integrity violations (23), syntax and access
    /// errors (42). Everything else (lost connection, serialization failure,
    /// deadlock, server shutting down) is transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            InboxError::Missing => true,
            InboxError::Finished | InboxError::LeaseLost { .. } => false,
            InboxError::Aborted { permanent, .. } => *permanent,
            InboxError::Query(_) => permanent_code(self.code()),
        }
    }
}

impl From<InboxError> for HandlerError {
    fn from(error: InboxError) -> Self {
        if error.is_permanent() {
            HandlerError::permanent(error)
        } else {
            HandlerError::transient(error)
        }
    }
}

/// The state one attempt's transaction shares with the handler's handles.
pub(crate) struct TxShared {
    conn: Mutex<Conn>,
    key: Option<Key>,
    /// The latest statement failure noted cannot pass on a retry.
    failed_permanent: AtomicBool,
    /// A statement was abandoned (a client-side timeout): it may still run
    /// on the server, so the transaction is rolled back, never committed.
    poisoned: AtomicBool,
}

/// The inbox's open transaction, handed to the handler in its
/// [`Context`]: `ctx.extension::<InboxTx>()`, or
/// [`InboxTx::from_context`]. Everything run through it commits together
/// with the message's inbox row, or not at all.
///
/// Do not run transaction control (`COMMIT`, `ROLLBACK`, `BEGIN`) through it;
/// `SAVEPOINT` is fine. Use it only while the handler runs: afterwards its
/// queries fail with [`InboxError::Finished`].
///
/// ```no_run
/// use backstop::{Context, HandlerError};
/// use backstop_postgres::InboxTx;
///
/// async fn record(order: String, ctx: Context) -> Result<(), HandlerError> {
///     let tx = InboxTx::from_context(&ctx)?;
///     tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&order]).await?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct InboxTx {
    shared: Arc<TxShared>,
}

impl std::fmt::Debug for InboxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxTx")
            .field("key", &self.shared.key)
            .finish_non_exhaustive()
    }
}

/// The transaction's client, locked for direct use (prepared statements,
/// `COPY`, pipelining): derefs to deadpool's client wrapper, which derefs
/// to [`tokio_postgres::Client`]. Other queries through the same
/// [`InboxTx`] wait until it is dropped.
pub struct TxClient<'a> {
    guard: MappedMutexGuard<'a, Object>,
}

impl std::fmt::Debug for TxClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxClient").finish_non_exhaustive()
    }
}

impl Deref for TxClient<'_> {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.guard
    }
}

impl InboxTx {
    pub(crate) fn new(conn: Conn, key: Option<Key>) -> (Self, OpenTx) {
        let shared = Arc::new(TxShared {
            conn: Mutex::new(conn),
            key,
            failed_permanent: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        });
        let open = OpenTx {
            shared: Arc::clone(&shared),
            settled: false,
        };
        (InboxTx { shared }, open)
    }

    /// The inbox transaction of this attempt.
    pub fn from_context(ctx: &Context) -> Result<&InboxTx, InboxError> {
        ctx.extension::<InboxTx>().ok_or(InboxError::Missing)
    }

    /// The idempotency key the inbox row was written for (`None`: the
    /// message had no key and is not deduplicated).
    pub fn key(&self) -> Option<&Key> {
        self.shared.key.as_ref()
    }

    /// Locks the transaction's client for direct use.
    pub async fn client(&self) -> Result<TxClient<'_>, InboxError> {
        let guard = self.shared.conn.lock().await;
        let guard = MutexGuard::try_map(guard, |conn| conn.client_mut())
            .map_err(|_| InboxError::Finished)?;
        Ok(TxClient { guard })
    }

    /// Runs a statement; the number of rows it changed.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, InboxError> {
        let result = self.client().await?.execute(sql, params).await;
        self.noted(result)
    }

    /// Runs a query; its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, InboxError> {
        let result = self.client().await?.query(sql, params).await;
        self.noted(result)
    }

    /// Runs a query that returns exactly one row.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, InboxError> {
        let result = self.client().await?.query_one(sql, params).await;
        self.noted(result)
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, InboxError> {
        let result = self.client().await?.query_opt(sql, params).await;
        self.noted(result)
    }

    /// Runs statements without parameters, separated by `;`.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), InboxError> {
        let result = self.client().await?.batch_execute(sql).await;
        self.noted(result)
    }

    /// Records that a statement run through [`client`](Self::client)
    /// failed with `error`, so that an [`InboxError::Aborted`] that follows
    /// is classified by the latest such failure (this type's own methods
    /// record theirs; "the transaction is aborted" errors that follow a
    /// failure do not replace its cause). Whether the handler returns the
    /// error or not, an aborted transaction never commits: the commit
    /// checks it.
    pub fn note_failure(&self, error: &tokio_postgres::Error) {
        if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) {
            return;
        }
        self.shared
            .failed_permanent
            .store(permanent_code(error.code()), Ordering::Release);
    }

    /// Marks a statement as abandoned (it may still run on the server):
    /// the transaction is rolled back, never committed.
    pub(crate) fn poison(&self) {
        self.shared.poisoned.store(true, Ordering::Release);
    }

    fn noted<T>(&self, result: Result<T, tokio_postgres::Error>) -> Result<T, InboxError> {
        if let Err(error) = &result {
            self.note_failure(error);
        }
        Ok(result?)
    }
}

/// True for SQLSTATE classes a retry cannot fix: data exceptions (22),
/// integrity violations (23), syntax and access errors (42).
pub(crate) fn permanent_code(code: Option<&SqlState>) -> bool {
    code.is_some_and(|code| {
        ["22", "23", "42"]
            .iter()
            .any(|class| code.code().starts_with(class))
    })
}

/// The layer's side of one attempt's transaction: it ends it. Dropped
/// unsettled (a panic, a timeout, a dropped future), it closes the
/// connection so the server rolls back; if a handle still holds the lock,
/// the connection is closed when the last handle goes.
pub(crate) struct OpenTx {
    shared: Arc<TxShared>,
    settled: bool,
}

impl OpenTx {
    /// True when a statement was abandoned: roll back, never commit.
    pub(crate) fn poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// True when the latest failure noted could not pass on a retry.
    pub(crate) fn failed_permanent(&self) -> bool {
        self.shared.failed_permanent.load(Ordering::Acquire)
    }

    /// Runs `sql` (`$1` key, `$2` fence) in the transaction; true if it returned a row.
    pub(crate) async fn check(
        &mut self,
        sql: &str,
        key: &str,
        fence: i64,
        timeout: Duration,
    ) -> Result<bool, PostgresError> {
        let Ok(mut conn) = tokio::time::timeout(timeout, self.shared.conn.lock()).await else {
            return Err(PostgresError::Timeout {
                op: "waiting for the handler's query to end",
                after: timeout,
            });
        };
        let rows = conn
            .query("inbox fence check", timeout, sql, &[&key, &fence])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Runs `sql` with `params` in the transaction; the rows it changed.
    pub(crate) async fn execute(
        &mut self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        timeout: Duration,
    ) -> Result<u64, PostgresError> {
        let Ok(mut conn) = tokio::time::timeout(timeout, self.shared.conn.lock()).await else {
            return Err(PostgresError::Timeout {
                op: "waiting for the handler's query to end",
                after: timeout,
            });
        };
        conn.execute(op, timeout, sql, params).await
    }

    /// Ends the transaction with `sql` (`COMMIT` or `ROLLBACK`). The
    /// connection returns to the pool only if that succeeded.
    pub(crate) async fn finish(
        &mut self,
        op: &'static str,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), PostgresError> {
        self.settled = true;
        let Ok(mut conn) = tokio::time::timeout(timeout, self.shared.conn.lock()).await else {
            // A handle leaked out of the handler holds the lock; the
            // connection is closed (rolled back) when the last handle goes.
            return Err(PostgresError::Timeout {
                op: "waiting for the handler's query to end",
                after: timeout,
            });
        };
        match conn.batch(op, timeout, sql).await {
            Ok(()) => {
                conn.set_in_transaction(false);
                conn.release();
                Ok(())
            }
            Err(error) => {
                conn.discard();
                Err(error)
            }
        }
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(mut conn) = self.shared.conn.try_lock() {
            conn.discard();
        }
    }
}
