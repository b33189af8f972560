//! [`PostgresStore`]: the idempotency [`Store`] on PostgreSQL.

mod sql;

use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::{Claim, Key};
use backstop::{Store, StoreError};
use deadpool_postgres::Pool;

use self::sql::Statements;
use crate::column;
use crate::conn::Conn;
use crate::{PgConfig, PostgresError, TableName};

/// The default table of the store.
pub const DEFAULT_STORE_TABLE: &str = "backstop_idempotency";

/// How many rows one purge statement deletes at most.
const PURGE_BATCH: i64 = 10_000;

/// How often a claim that lost a race with a concurrent change is retried.
const CLAIM_TRIES: usize = 3;

/// An idempotency [`Store`] on PostgreSQL, shared by every worker that uses
/// the same database and table.
///
/// One row per key: `state`, `owner`, `lease_until`, `failed_runs`,
/// `replay`, `created_at`, `updated_at`, `expires_at` (see
/// [`migration_sql`](Self::migration_sql)). A claim is one
/// `INSERT … ON CONFLICT (key) DO UPDATE … WHERE <takeover or redrive> RETURNING`
/// statement, atomic under concurrency; only a claim that did not win
/// reads the row again to say why (completed, dead-lettered, busy). Lease
/// times come from the server's clock. Finished keys are kept for the TTL;
/// [`purge_expired`](Self::purge_expired) deletes the rest (run it now and
/// then: expired rows are already ignored, purging only reclaims space).
///
/// Every operation is bounded by the operation timeout (pool wait included);
/// when the server is down it fails with [`StoreError::Backend`] and
/// backstop defers the message. Broken connections are dropped from the
/// pool, so the store recovers by itself when the server is back.
///
/// Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    table: TableName,
    sql: Arc<Statements>,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table.to_string())
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whole milliseconds, at least one.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// A count as the table's `integer`.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl PostgresStore {
    /// A store on `pool`, table [`DEFAULT_STORE_TABLE`], finished keys kept 24 h,
    /// 5 s per operation. Call [`migrate`](Self::migrate) once before use
    /// (or apply [`migration_sql`](Self::migration_sql) with your own tool).
    pub fn new(pool: Pool) -> Self {
        let table = TableName::known(DEFAULT_STORE_TABLE);
        PostgresStore {
            pool,
            sql: Arc::new(Statements::new(&table)),
            table,
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
        }
    }

    /// Builds a pool from `config`, creates the table if needed, and returns
    /// the store with its defaults.
    pub async fn connect(config: &PgConfig) -> Result<Self, PostgresError> {
        let store = PostgresStore::new(config.pool()?);
        store.migrate().await?;
        Ok(store)
    }

    /// Uses table `name` (`table` or `schema.table`) instead of the default.
    pub fn with_table(mut self, name: &str) -> Result<Self, PostgresError> {
        self.table = TableName::new(name)?;
        self.sql = Arc::new(Statements::new(&self.table));
        Ok(self)
    }

    /// Sets how long completed, dead-lettered and released keys are remembered.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Sets the most one operation may take, connection checkout included.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The table's name, as used in SQL.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQL that creates the table and its index (idempotent).
    pub fn migration_sql(&self) -> &str {
        &self.sql.migrate
    }

    /// Creates the table and its index if they do not exist. Safe to run
    /// from many workers at once (serialised by an advisory lock).
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        crate::migrate::run(&self.pool, &self.table, &self.sql.migrate, self.timeout).await
    }

    /// Deletes the rows whose TTL passed; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, PostgresError> {
        let mut conn = self.conn().await?;
        let mut purged = 0;
        loop {
            let n = conn
                .execute("purge", self.timeout, &self.sql.purge, &[&PURGE_BATCH])
                .await?;
            purged += n;
            if n < PURGE_BATCH.unsigned_abs() {
                return Ok(purged);
            }
        }
    }

    async fn conn(&self) -> Result<Conn, PostgresError> {
        Conn::checkout(&self.pool, self.timeout).await
    }

    /// Why a claim did not win, or `None` if the row changed meanwhile.
    async fn inspect(
        &self,
        conn: &mut Conn,
        key: &Key,
        replay: u32,
    ) -> Result<Option<Claim>, PostgresError> {
        let rows = conn
            .query(
                "claim",
                self.timeout,
                &self.sql.inspect,
                &[&column::key(key)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let read = |source| PostgresError::Query {
            op: "claim",
            source,
        };
        let state: &str = row.try_get("state").map_err(read)?;
        let seen: i32 = row.try_get("replay").map_err(read)?;
        let expired: bool = row.try_get("expired").map_err(read)?;
        let remaining: Option<i64> = row.try_get("remaining_ms").map_err(read)?;
        let newer = i64::from(replay) > i64::from(seen);
        Ok(match state {
            "completed" if !expired => Some(Claim::Completed),
            "dead_lettered" if !expired && !newer => Some(Claim::DeadLettered),
            "in_progress" => match remaining {
                Some(ms) if ms > 0 => Some(Claim::Busy {
                    remaining: Duration::from_millis(ms.unsigned_abs()),
                }),
                _ => None,
            },
            _ => None,
        })
    }

    async fn owned(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        Ok(conn.execute(op, self.timeout, sql, params).await? == 1)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn().await?;
        let (lease, ttl, replay_int) = (millis(lease), millis(self.ttl), int(replay));
        for _ in 0..CLAIM_TRIES {
            let rows = conn
                .query(
                    "claim",
                    self.timeout,
                    &self.sql.claim,
                    &[&column::key(key), &owner, &lease, &replay_int, &ttl],
                )
                .await?;
            if let Some(row) = rows.first() {
                let failed: i32 = row.try_get(0).map_err(|source| PostgresError::Query {
                    op: "claim",
                    source,
                })?;
                return Ok(Claim::Acquired {
                    failed_runs: u32::try_from(failed).unwrap_or(0),
                });
            }
            if let Some(claim) = self.inspect(&mut conn, key, replay).await? {
                return Ok(claim);
            }
        }
        // The row kept changing under us: someone else is working on the key.
        tracing::debug!(%key, "claim raced with concurrent changes; deferring");
        Ok(Claim::Busy {
            remaining: Duration::ZERO,
        })
    }

    async fn renew(&self, key: &Key, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let (lease, ttl) = (millis(lease), millis(self.ttl));
        self.owned(
            "renew",
            &self.sql.renew,
            &[&column::key(key), &owner, &lease, &ttl],
        )
        .await
    }

    async fn complete(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        let ttl = millis(self.ttl);
        self.owned(
            "complete",
            &self.sql.finish,
            &[&column::key(key), &owner, &"completed", &ttl],
        )
        .await
    }

    async fn dead_letter(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        let ttl = millis(self.ttl);
        self.owned(
            "dead_letter",
            &self.sql.finish,
            &[&column::key(key), &owner, &"dead_lettered", &ttl],
        )
        .await
    }

    async fn release(
        &self,
        key: &Key,
        owner: &str,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let (failed, ttl) = (failed_runs.map(int), millis(self.ttl));
        self.owned(
            "release",
            &self.sql.release,
            &[&column::key(key), &owner, &failed, &ttl],
        )
        .await
        .map(drop)
    }
}
