//! The transactional inbox: exactly-once effects on top of at-least-once
//! delivery, for handlers whose effects live in PostgreSQL.
//!
//! [`InboxLayer`] goes around each attempt ([`StackBuilder::around_attempt`](backstop::StackBuilder::around_attempt)),
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
//! deduplication. Rows are per consumer: the `consumer` column is the
//! message's [`Keyspace`] (its source queue or topic, its Kafka group, and
//! the name given to [`Inbox::consumer`] added), so two consumers sharing a
//! table never skip each other's messages. A table filled by an earlier
//! release (rows under the consumer name as given) is refused by
//! [`Inbox::migrate`] unless [`Inbox::layout`] chooses to keep that layout
//! or to migrate: during the migration window a message's row under the old
//! name is matched too (and written with its new row, so a worker of the
//! earlier release waits for and skips it). A connection whose transaction was interrupted is closed,
//! never returned to the pool, so the server rolls it back.
//!
//! A statement that failed leaves the transaction aborted, and PostgreSQL
//! answers a `COMMIT` of an aborted transaction with a rollback, not an
//! error. So the layer commits with the one simple query `SELECT 1;
//! COMMIT`: on an aborted transaction the `SELECT` fails and the `COMMIT`
//! never runs, and a handler that returned success after ignoring a
//! failure gets [`InboxError::Aborted`] (nothing committed; retried, or
//! dead-lettered when a failure it noted cannot pass on a retry) instead of
//! an ack for effects that never committed. (A `ROLLBACK TO SAVEPOINT` the
//! handler ran makes the transaction usable again and it commits.) A
//! statement abandoned after a client-side timeout (an outbox insert) may
//! still run on the server: that transaction is rolled back, never
//! committed.
//!
//! Failures of the inbox itself (no connection, `BEGIN` or the inbox insert
//! failed) are transient [`HandlerError`](backstop::HandlerError)s: the
//! attempt is retried with backoff. A failed `COMMIT` is classified like
//! the handler's own queries ([`InboxError::is_permanent`]).
//!
//! **Fencing.** With the idempotency layer on a [`PostgresStore`] in the
//! same database, [`Inbox::fenced_by`] makes the commit conditional on the
//! lease: just before `COMMIT`, the transaction checks that the store still
//! holds the run's lease under its fencing token and locks that row, so a
//! takeover waits for the commit. A run whose lease was lost (taken over
//! after it expired) is rolled back and deferred ([`InboxError::LeaseLost`]):
//! the effects of the newer run are the ones that commit. Where the store is
//! another system (Redis), the fence cannot join the transaction: a run
//! that loses its lease is cancelled through its token, and the inbox row's
//! uniqueness still keeps its effects to one commit, but the run that
//! commits may be the older one.
//!
//! **In a source's transaction** (Kafka exactly-once mode, see
//! [`backstop::transaction`]) and without an [outbox](Inbox::outbox), the
//! handler's [`Context::publish`](backstop::Context::publish) messages go
//! into the Kafka transaction once the inbox committed, and are also
//! recorded in the row (column `outputs`, schema version 2) in the inbox
//! transaction: a redelivery that finds the row (the Kafka transaction
//! aborted after the inbox committed) skips the handler and hands the
//! recorded outputs to the current transaction, with the ids they had.
//! Keep the idempotency layer in front of the inbox (a [`PostgresStore`],
//! as the order worker does): its `completed` mark, written after the Kafka
//! commit, answers a later copy of the same input (a producer's retry) as a
//! duplicate before it reaches the inbox. Without it such a copy finds the
//! row and re-emits the outputs (same ids: readers that deduplicate by id
//! drop them).

mod layer;
mod outputs;
mod sql;
pub(crate) mod tx;

pub use self::layer::{InboxLayer, InboxService};
pub use self::tx::{InboxError, InboxTx, TxClient};

use self::sql::Statements;

use std::sync::Arc;
use std::time::Duration;

use backstop::KeySource;
use backstop::idempotency::{Key, KeyLayout, Keyspace, Layout};
use backstop::message::Meta;
use deadpool_postgres::Pool;

use crate::conn::Conn;
use crate::layout::LayoutCell;
use crate::outbox::Outbox;
use crate::{PostgresError, PostgresStore, TableName};

/// The default inbox table.
pub const DEFAULT_INBOX_TABLE: &str = "backstop_inbox";

/// How many rows one purge statement deletes at most.
const PURGE_BATCH: i64 = 10_000;

/// A transactional inbox table and how messages are keyed into it; see the
/// [module docs](self). Build the stack's layer with [`Inbox::layer`].
#[derive(Clone)]
pub struct Inbox {
    pool: Pool,
    table: TableName,
    consumer: String,
    /// The consumer's name as the outbox's ids carry it (`None`: no name).
    pub(crate) service: Option<Arc<str>>,
    key: KeySource,
    timeout: Duration,
    sql: Arc<Statements>,
    /// The store's lease check, when fenced ([`Inbox::fenced_by`]).
    fence: Option<Arc<str>>,
    /// The user's choice of key layout, and the layout found on first use.
    layout: LayoutCell,
    /// Where `Context::publish` writes, when set ([`Inbox::outbox`]).
    pub(crate) outbox: Option<Outbox>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.table.to_string())
            .field("consumer", &self.consumer)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("fenced", &self.fence.is_some())
            .field("layout", &self.layout.choice())
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox on `pool`: table [`DEFAULT_INBOX_TABLE`], no consumer name
    /// added to the keyspaces, keys from the payload else the message id,
    /// 5 s for each of its own statements, per-consumer keyspaces.
    /// Call [`migrate`](Self::migrate) once before use.
    pub fn new(pool: Pool) -> Self {
        let table = TableName::known(DEFAULT_INBOX_TABLE);
        Inbox {
            pool,
            sql: Arc::new(Statements::new(&table)),
            table,
            consumer: String::new(),
            service: None,
            key: KeySource::PayloadOrMessageId,
            timeout: Duration::from_secs(5),
            fence: None,
            layout: LayoutCell::default(),
            outbox: None,
        }
    }

    /// Gives handlers a transactional outbox: [`Context::publish`](backstop::Context::publish)
    /// writes each message into the attempt's transaction (committed with
    /// its effects and inbox row, or not at all), and after a commit this
    /// process's [`OutboxRelay`](crate::outbox::OutboxRelay) is woken. See
    /// [`outbox`](crate::outbox). The outbox may use another pool, but must
    /// be in the same database as the inbox.
    #[must_use]
    pub fn outbox(mut self, outbox: &Outbox) -> Self {
        self.outbox = Some(outbox.clone());
        self
    }

    /// Sets what to do with rows of an earlier release found in the table
    /// (default [`KeyLayout::Keyspaced`]: refused): keep them and their
    /// layout ([`KeyLayout::Legacy`]), or migrate ([`KeyLayout::Migrate`];
    /// give the idempotency store the same window). Checked by
    /// [`migrate`](Self::migrate).
    #[must_use]
    pub fn layout(mut self, choice: KeyLayout) -> Self {
        self.layout = LayoutCell::new(choice);
        self
    }

    /// The key layout of the table: read from its marker (or decided and
    /// marked) on first use, then remembered.
    pub async fn key_layout(&self) -> Result<Layout, PostgresError> {
        self.layout.get(&self.pool, &self.table, self.timeout).await
    }

    /// The keyspace of this consumer's rows for messages of `source` (a
    /// queue or topic) consumed by `group` (Kafka).
    pub fn keyspace(&self, source: &str, group: Option<&str>) -> Keyspace {
        Keyspace::new(source, group, Some(&self.consumer))
    }

    /// The `consumer` column of `keyspace`'s rows in `layout`: the
    /// keyspace, or in the legacy layout the consumer name as given.
    fn column(&self, layout: Layout, keyspace: &Keyspace) -> String {
        if layout.keyspaced() {
            crate::column::text(keyspace.as_str()).into_owned()
        } else {
            self.consumer.clone()
        }
    }

    /// The `consumer` column of a message's row in `layout`, and its row
    /// under the earlier release's name too while that is read.
    pub(crate) fn consumers(&self, layout: Layout, meta: &Meta) -> (String, Option<&str>) {
        let keyspace = Keyspace::of(meta, Some(&self.consumer));
        let legacy = layout
            .reads_legacy(std::time::SystemTime::now())
            .then_some(self.consumer.as_str());
        (self.column(layout, &keyspace), legacy)
    }

    /// Commits a run's transaction only while the run holds its lease in
    /// `store` (same database; see [Fencing](self#fencing)). Runs without a
    /// lease (no idempotency layer, a message without a key) are not checked.
    #[must_use]
    pub fn fenced_by(mut self, store: &PostgresStore) -> Self {
        self.fence = Some(Arc::from(store.lock_held_sql()));
        self
    }

    /// Uses table `name` (`table` or `schema.table`) instead of the default.
    pub fn with_table(mut self, name: &str) -> Result<Self, PostgresError> {
        self.table = TableName::new(name)?;
        self.sql = Arc::new(Statements::new(&self.table));
        self.layout = LayoutCell::new(self.layout.choice());
        Ok(self)
    }

    /// Names the consumer: the name is added to the keyspace of every row
    /// (never in place of the source), so two services consuming one
    /// queue or group into one table deduplicate apart.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = crate::column::text(&name.into()).into_owned();
        self.service = (!self.consumer.is_empty()).then(|| Arc::from(self.consumer.as_str()));
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

    /// The SQL that brings the inbox table from any earlier version to the
    /// latest (idempotent), version row included.
    pub fn migration_sql(&self) -> String {
        crate::migrate::script(&self.table, &self.sql.steps)
    }

    /// Creates the inbox table, or migrates it in place from an earlier
    /// version (see [`PostgresStore::migrate`](crate::PostgresStore::migrate)),
    /// then checks its key layout against [`layout`](Self::layout).
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        crate::migrate::run(&self.pool, &self.table, &self.sql.steps, self.timeout).await?;
        self.key_layout().await.map(drop)
    }

    /// True if a message with `key` was committed in `keyspace` (see
    /// [`Inbox::keyspace`]; in the legacy layout, under the consumer name).
    pub async fn contains(&self, keyspace: &Keyspace, key: &Key) -> Result<bool, PostgresError> {
        let consumer = self.column(self.key_layout().await?, keyspace);
        let mut conn = Conn::checkout(&self.pool, self.timeout).await?;
        let rows = conn
            .query(
                "inbox lookup",
                self.timeout,
                &self.sql.contains,
                &[&consumer, &crate::column::key(key)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Deletes the rows processed more than `age` ago, of every consumer of
    /// the table; returns how many. Keep `age` longer than any redelivery
    /// or replay you want skipped: a message whose row is gone runs again.
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
                    &[&age, &PURGE_BATCH],
                )
                .await?;
            purged += n;
            if n < PURGE_BATCH.unsigned_abs() {
                return Ok(purged);
            }
        }
    }

    /// The layer for [`StackBuilder::around_attempt`](backstop::StackBuilder::around_attempt).
    pub fn layer(&self) -> InboxLayer {
        InboxLayer::new(self.clone())
    }
}
