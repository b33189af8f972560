//! The transactional outbox: messages a handler publishes are written in
//! the same PostgreSQL transaction as its effects and its inbox row, then
//! relayed to the broker.
//!
//! With [`Inbox::outbox`](crate::Inbox::outbox), [`Context::publish`](backstop::Context::publish)
//! inside a handler inserts a row into the outbox table through the
//! attempt's open transaction. The row exists if and only if the
//! handler's effects commit: a rolled-back attempt (an error, a panic, a
//! crash, a lost lease) leaves none, and a redelivery skipped by the inbox
//! publishes nothing again. Outside a handler (a web request, say),
//! [`Outbox::insert`] writes a row in any transaction of yours.
//!
//! An [`OutboxRelay`] ([`Outbox::relay`]) sends the rows to the broker with
//! confirms and deletes each only after its confirm. It is the spool's relay
//! ([`backstop_spool::Relay`]) draining this table instead of a local file:
//! rows in `seq` order, one key's rows one after the other, keys
//! concurrently; a row the broker refuses for good (too large, invalid,
//! not authorised) is set aside ([`Outbox::refused`]) so its key goes on;
//! any other failure makes its key wait and retry with backoff.
//!
//! # Metrics
//!
//! The relay reports under the spool's names with `spool="outbox:<table>"`
//! ([`backstop_spool::metrics`]): rows relayed, failed sends and rows
//! refused for good as they happen, and, from the leading relay every
//! [`RelayConfig::depth_every`] (5 s),
//! `backstop_spool_depth` (rows waiting). `backstop outbox
//! pending|refused|retry` shows the same from the command line.
//!
//! # Order per key, across processes
//!
//! - **Writing.** A keyed message takes a transaction-level advisory lock on
//!   its destination and key before its row is inserted, so a second
//!   transaction publishing the same key waits for the first to commit or
//!   roll back: within a key, `seq` order is commit order. (Publish late in
//!   the handler: the lock is held until the commit. Two transactions taking
//!   the same two keys in opposite orders can deadlock; PostgreSQL aborts one,
//!   which is retried.) Messages without a key are ordered per destination
//!   by `seq` but take no lock: two concurrent transactions may commit in
//!   the other order.
//! - **Relaying.** Every worker process may run a relay; one leads at a
//!   time: the one holding a session-level advisory lock named after the
//!   table, on a connection it keeps for reads and deletes. The others
//!   wait (`standby_poll`) and one takes over when the leader's session
//!   ends (its process died, its connection was closed or terminated). The
//!   leader checks its connection before each send, so one whose session
//!   ended with a close its client saw stops at once; a send already on its
//!   way, or a round of a leader cut off without its client noticing
//!   (until TCP gives up), may still reach the broker while the new leader
//!   starts: duplicates with the same id, at most one round per lost leader.
//!   Session locks need a session: behind PgBouncer, give the relay a
//!   connection in session pooling mode (transaction pooling would hand
//!   the lock's session to others).
//! - **Rows that commit late.** Rows become visible in commit order, not
//!   `seq` order. A pass of the relay ends at the end of the table or
//!   once it read the rows that were there when it began (`max(seq)`), and
//!   the next pass starts from the oldest row; a read past the cursor holds
//!   back the rows of a key that has an older row behind the cursor. So a
//!   row whose transaction committed after the relay read past its `seq`
//!   goes out at the next pass (under load and behind a backlog too; while
//!   other keys wait for their backoff, at the latest when that is due),
//!   and a key's rows are never sent out of `seq` order (one transaction's
//!   rows included).
//!
//! # What a crash can cause
//!
//! A relay that dies (or loses its session) between the broker's confirm
//! and the row's delete leaves the row to the next leader, which sends it
//! again, with the **same message id** (the row's `message_id`: derived
//! from the consumer's keyspace and the handled message's id unless the
//! handler kept its own), so a consumer with idempotency keyed by message
//! id ([`KeySource::MessageId`](backstop::KeySource)) suppresses it. At
//! most one round (`batch` rows) per lost leader is sent again.
//!
//! # A failed publish
//!
//! A failed outbox insert (a constraint, the key's lock not taken within
//! the statement timeout) returns an error from `ctx.publish`; returned by
//! the handler, the attempt rolls back and is retried (or dead-lettered,
//! when permanent). A handler that ignores it does not commit its effects
//! without the message: a failed statement aborted the transaction, and a
//! timed-out one may still run, and the inbox commits neither
//! ([`InboxError::Aborted`](crate::InboxError::Aborted)).
//!
//! ```no_run
//! use std::sync::Arc;
//! use backstop::{Context, HandlerError, Message, StackBuilder, handler_fn, memory::MemoryBroker};
//! use backstop_postgres::{Inbox, InboxTx, Outbox, PgConfig};
//! use backstop_postgres::outbox::RelayConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = PgConfig::new("postgres://backstop@127.0.0.1/backstop").pool()?;
//! let outbox = Outbox::new(pool.clone());
//! outbox.migrate().await?;
//! let inbox = Inbox::new(pool).outbox(&outbox);
//! inbox.migrate().await?;
//!
//! async fn place(order: String, ctx: Context) -> Result<(), HandlerError> {
//!     let tx = InboxTx::from_context(&ctx)?;
//!     tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&order]).await?;
//!     // Committed with the insert above, or not at all.
//!     ctx.publish("orders.placed", Message::new(order.clone()).with_key(order)).await?;
//!     Ok(())
//! }
//!
//! let broker = MemoryBroker::new();
//! let relay = outbox.relay(broker.clone(), RelayConfig::default());
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
//!     .around_attempt(inbox.layer())
//!     .build(handler_fn(place));
//! // … run the stack; on shutdown:
//! relay.stop().await;
//! # Ok(())
//! # }
//! ```

mod relay;
mod rows;
mod sql;
mod write;

pub use self::relay::{OutboxRelay, RelayConfig};
pub(crate) use self::write::OutboxWriter;

use self::rows::refused_record;
pub(crate) use self::rows::{Unreadable, record};
use self::sql::Statements;

use std::sync::Arc;
use std::time::Duration;

use backstop::Message;
use backstop_spool::RefusedRecord;
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::GenericClient;

use crate::conn::Conn;
use crate::{PostgresError, TableName};

/// The default outbox table.
pub const DEFAULT_OUTBOX_TABLE: &str = "backstop_outbox";

/// An outbox table; see the [module docs](self). Cheap to clone: clones
/// share the table and the relay's wake-up.
#[derive(Clone)]
pub struct Outbox {
    pool: Pool,
    table: TableName,
    timeout: Duration,
    pub(crate) sql: Arc<Statements>,
    arrived: Arc<Notify>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.table.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An outbox write or read failed.
fn query(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
    move |source| PostgresError::Query { op, source }
}

impl Outbox {
    /// An outbox on `pool`: table [`DEFAULT_OUTBOX_TABLE`], 5 s for each of
    /// its own statements. Call [`migrate`](Self::migrate) once before use.
    pub fn new(pool: Pool) -> Self {
        let table = TableName::known(DEFAULT_OUTBOX_TABLE);
        Outbox {
            pool,
            sql: Arc::new(Statements::new(&table)),
            table,
            timeout: Duration::from_secs(5),
            arrived: Arc::new(Notify::new()),
        }
    }

    /// Uses table `name` (`table` or `schema.table`) instead of the default.
    pub fn with_table(mut self, name: &str) -> Result<Self, PostgresError> {
        self.table = TableName::new(name)?;
        self.sql = Arc::new(Statements::new(&self.table));
        Ok(self)
    }

    /// Bounds each of the relay's and the outbox's own statements.
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The table's name, as used in SQL.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The relay's name in logs and metrics.
    pub(crate) fn name(&self) -> String {
        format!("outbox:{}", self.table)
    }

    pub(crate) fn arrived(&self) -> &Notify {
        &self.arrived
    }

    /// The SQL that creates the outbox table (idempotent), version row included.
    pub fn migration_sql(&self) -> String {
        crate::migrate::script(&self.table, &self.sql.steps)
    }

    /// Creates the outbox table, or migrates it in place from an earlier version.
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        crate::migrate::run(&self.pool, &self.table, &self.sql.steps, self.timeout)
            .await
            .map(drop)
    }

    /// Writes `message` for `destination` through `client`, which must be
    /// inside a transaction of yours: the row commits with it, and a keyed
    /// message first takes its key's lock, held until your transaction
    /// ends (see [order per key](self#order-per-key-across-processes); on
    /// a client in autocommit the lock is released at once and the key's
    /// order is not kept). The wait for the key's lock is bounded on the
    /// server by the outbox's statement timeout (`lock_timeout` for that
    /// statement only: SQLSTATE 55P03 when it runs out, which aborts your
    /// transaction); the whole call on the client a little later: after a
    /// [`PostgresError::Timeout`] a statement may still run on the server,
    /// so roll the transaction back (the inbox does).
    /// Returns the row's `seq`. After your commit, call
    /// [`committed`](Self::committed) to wake this process's relay at once
    /// (otherwise it finds the row within its idle poll).
    ///
    /// A message without a message id gets a new one here, stored with the
    /// row: every relay of it carries the same id.
    pub async fn insert<C: GenericClient + Sync>(
        &self,
        client: &C,
        destination: &str,
        message: &Message,
    ) -> Result<u64, PostgresError> {
        // The server bounds the wait for the key's lock; this bounds the
        // rest (a server that does not answer) a little later.
        let timeout = self.timeout + self.timeout / 2 + Duration::from_millis(100);
        match tokio::time::timeout(timeout, self.write(client, destination, message)).await {
            Ok(written) => written,
            Err(_) => Err(PostgresError::Timeout {
                op: "outbox insert (waiting for its key's lock, or the insert)",
                after: timeout,
            }),
        }
    }

    async fn write<C: GenericClient + Sync>(
        &self,
        client: &C,
        destination: &str,
        message: &Message,
    ) -> Result<u64, PostgresError> {
        let destination = crate::column::text(destination);
        if let Some(key) = &message.key {
            let wait = format!("{}ms", self.timeout.as_millis().max(1));
            let row = client
                .query_one(&self.sql.key_lock, &[&destination, &&key[..], &wait])
                .await
                .map_err(query("outbox key lock"))?;
            let before: String = row.try_get(0).map_err(query("outbox key lock"))?;
            client
                .execute(&self.sql.restore, &[&before])
                .await
                .map_err(query("outbox key lock"))?;
        }
        let headers =
            serde_json::to_string(&message.headers).map_err(|e| PostgresError::Unexpected {
                op: "outbox insert",
                what: format!("headers cannot be written as JSON: {e}"),
            })?;
        let id = message.id_for_publish();
        let row = client
            .query_one(
                &self.sql.insert,
                &[
                    &destination,
                    &crate::column::text(&message.meta.source),
                    &crate::column::text(&id),
                    &message.key.as_deref(),
                    &&message.payload[..],
                    &headers,
                ],
            )
            .await
            .map_err(query("outbox insert"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Wakes this process's relay: call after committing rows written with
    /// [`insert`](Self::insert). (The inbox does it for handlers.)
    pub fn committed(&self) {
        self.arrived.notify_one();
    }

    /// How many rows wait for the relay (refused rows not counted).
    pub async fn pending(&self) -> Result<u64, PostgresError> {
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let rows = conn
            .query("outbox count", self.timeout, &self.sql.pending, &[])
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    /// Up to `limit` rows the broker refused for good, oldest first. Their
    /// payload and headers stay in the table for an operator; put one back
    /// in line with [`retry_refused`](Self::retry_refused), or delete it.
    pub async fn refused(&self, limit: usize) -> Result<Vec<RefusedRecord>, PostgresError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let rows = conn
            .query("outbox refused", self.timeout, &self.sql.refused, &[&limit])
            .await?;
        Ok(rows.iter().map(refused_record).collect())
    }

    /// Puts refused row `seq` back in line (after the destination or the
    /// message was fixed); false if it was not refused.
    pub async fn retry_refused(&self, seq: u64) -> Result<bool, PostgresError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let n = conn
            .execute(
                "outbox retry refused",
                self.timeout,
                &self.sql.retry_refused,
                &[&seq],
            )
            .await?;
        self.committed();
        Ok(n > 0)
    }

    /// Starts a relay of this outbox to `publisher`; see [`OutboxRelay`].
    pub fn relay<P: backstop::publish::Publisher>(
        &self,
        publisher: P,
        config: RelayConfig,
    ) -> OutboxRelay {
        OutboxRelay::start(self.clone(), publisher, config)
    }
}
