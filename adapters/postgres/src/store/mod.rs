//! [`PostgresStore`]: the idempotency [`Store`] on PostgreSQL.

mod rows;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use backstop::error::{Failure, StoreError};
use backstop::idempotency::Store;
use backstop::idempotency::{Claim, ClaimOf, Fence, Held, Key, KeyLayout, Layout};
use deadpool_postgres::Pool;

use self::rows::{at_most, batch_claim, lost_claim, won_claim};
use self::sql::Statements;
use crate::column;
use crate::conn::Conn;
use crate::layout::LayoutCell;
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
/// One row per key: `state`, `owner`, `fence`, `crashed`, `lease_until`,
/// `failed_runs`, `replay`, `created_at`, `updated_at`, `expires_at`, and
/// the `letter_*` columns of a dead letter whose write failed (kind, error
/// text, attempts, failure times, redrive, when recorded), reported by the
/// next claim so the redelivery writes only that letter (see
/// [`migration_sql`](Self::migration_sql)). A claim is one
/// `INSERT … ON CONFLICT (key) DO UPDATE … WHERE <takeover or redrive> RETURNING`
/// statement, atomic under concurrency; only a claim that did not win
/// reads the row again to say why (completed, dead-lettered, busy). Lease
/// times and fencing tokens come from the server's clock. `claim_many` is
/// one statement (the same `INSERT … SELECT … FROM unnest(…) ON CONFLICT`,
/// which also returns the rows of the claims that did not win, as they
/// were); `renew_many` and `complete_many` are one `UPDATE … FROM unnest(…)`
/// each.
///
/// The schema is versioned (`backstop_schema_version`, see
/// [`migrate`](Self::migrate)): a table made by an earlier release is
/// brought up to date in place, and workers of the earlier release keep
/// working on it during a rolling upgrade (their leases are respected, and
/// theirs fence the later workers out). Finished keys are kept for the TTL;
/// [`purge_expired`](Self::purge_expired) deletes the rest (run it now and
/// then: expired rows are already ignored, purging only reclaims space).
///
/// Every operation is bounded by the operation timeout (pool wait included);
/// when the server is down it fails with [`StoreError::Backend`] and
/// backstop defers the message. Broken connections are dropped from the
/// pool, so the store recovers by itself when the server is back.
///
/// Cheap to clone (clones share the pool).
///
/// The table's migration, for a team that applies SQL with its own tool
/// (the pool connects on first use, so this needs no server):
///
/// ```
/// use backstop_postgres::{PgConfig, PostgresStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), backstop_postgres::PostgresError> {
/// let pool = PgConfig::new("postgres://backstop@127.0.0.1/app").pool()?;
/// let store = PostgresStore::new(pool).with_table("billing.backstop_keys")?;
/// let sql = store.migration_sql();
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "billing"."backstop_keys""#));
/// assert!(store.schema_version() >= 1);
/// // A name that is not a plain (schema-qualified) identifier is refused.
/// assert!(PostgresStore::new(store.pool().clone()).with_table("keys; DROP TABLE x").is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    table: TableName,
    sql: Arc<Statements>,
    ttl: Duration,
    timeout: Duration,
    /// The user's choice of key layout, and the layout found on first use.
    layout: LayoutCell,
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

/// A fence as the table's `bigint` (tokens this store hands out fit; a
/// larger one matches no row).
fn fence_column(fence: Fence) -> i64 {
    i64::try_from(fence.0).unwrap_or(-1)
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
            layout: LayoutCell::default(),
        }
    }

    /// Sets what to do with the key layout found in the table (default
    /// [`KeyLayout::Keyspaced`]: a table holding keys of an earlier release
    /// is refused): keep the global keys ([`KeyLayout::Legacy`]) or upgrade
    /// them ([`KeyLayout::Migrate`]). Checked by [`migrate`](Self::migrate).
    #[must_use]
    pub fn layout(mut self, choice: KeyLayout) -> Self {
        self.layout = LayoutCell::new(choice);
        self
    }

    /// The key layout of the table: read from its marker in
    /// `backstop_schema_version` (or decided and marked) on first use, then
    /// remembered.
    pub async fn key_layout(&self) -> Result<Layout, PostgresError> {
        self.layout.get(&self.pool, &self.table, self.timeout).await
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
        self.layout = LayoutCell::new(self.layout.choice());
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

    /// The SQL that brings the table from any earlier version to the latest
    /// (idempotent), version row included: for users who apply migrations
    /// with their own tool.
    pub fn migration_sql(&self) -> String {
        crate::migrate::script(&self.table, &self.sql.steps)
    }

    /// The statement that checks and locks a held lease inside a transaction
    /// (`$1` key as stored, `$2` fence): the inbox's fence check.
    pub(crate) fn lock_held_sql(&self) -> &str {
        &self.sql.lock_held
    }

    /// The latest schema version of the store's table this release knows.
    pub fn schema_version(&self) -> i32 {
        i32::try_from(self.sql.steps.len()).unwrap_or(i32::MAX)
    }

    /// Creates the table, or migrates it in place from an earlier version,
    /// to [`schema_version`](Self::schema_version), then checks its key
    /// layout against [`layout`](Self::layout) ([`PostgresError::Layout`]
    /// says what to choose). Safe to run from many workers at once
    /// (serialised by advisory locks); refuses a table a newer release
    /// migrated ([`PostgresError::SchemaTooNew`]).
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        crate::migrate::run(&self.pool, &self.table, &self.sql.steps, self.timeout).await?;
        self.key_layout().await.map(drop)
    }

    /// The version the table is at now (0: absent, or made by the first
    /// release, which recorded no version).
    pub async fn current_schema_version(&self) -> Result<i32, PostgresError> {
        crate::migrate::version(&self.pool, &self.table, self.timeout).await
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
        match rows.first() {
            Some(row) => lost_claim("claim", row, 0, replay),
            None => Ok(None),
        }
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

    /// Runs a batch statement over `held` (`$1` keys, `$2` fences, then
    /// `third` and the TTL); which items it changed.
    async fn owned_many(
        &self,
        op: &'static str,
        sql: &str,
        held: &[Held<'_>],
        third: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Vec<Result<bool, StoreError>> {
        if held.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = held
            .iter()
            .map(|h| column::key(h.key).into_owned())
            .collect();
        let fences: Vec<i64> = held.iter().map(|h| fence_column(h.fence)).collect();
        let ttl = millis(self.ttl);
        let rows = async {
            let mut conn = self.conn().await?;
            conn.query(op, self.timeout, sql, &[&keys, &fences, third, &ttl])
                .await
        }
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => return each_fails(held.len(), &error),
        };
        let mut done = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            if let (Ok(key), Ok(fence)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1)) {
                done.insert((key, fence));
            }
        }
        keys.into_iter()
            .zip(fences)
            .map(|pair| Ok(done.contains(&pair)))
            .collect()
    }
}

/// The same error for each of `n` items of a batch.
fn each_fails<T>(n: usize, error: &PostgresError) -> Vec<Result<T, StoreError>> {
    let text = error.to_string();
    (0..n)
        .map(|_| Err(StoreError::Backend(text.clone().into())))
        .collect()
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    /// True: the stack batches this store's calls.
    fn remote(&self) -> bool {
        true
    }

    async fn layout(&self) -> Result<Layout, StoreError> {
        Ok(self.key_layout().await?)
    }

    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn().await?;
        let asked = lease;
        let (lease, ttl, replay_int) = (millis(lease), millis(self.ttl), int(replay));
        let owner = column::text(owner);
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
                return Ok(won_claim("claim", row)?);
            }
            if let Some(claim) = self.inspect(&mut conn, key, replay).await? {
                return Ok(at_most(claim, asked));
            }
        }
        // The row kept changing under us: someone else is working on the key.
        tracing::debug!(%key, "claim raced with concurrent changes; deferring");
        Ok(Claim::Busy {
            remaining: Duration::ZERO,
        })
    }

    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        let (lease, ttl) = (millis(lease), millis(self.ttl));
        self.owned(
            "renew",
            &self.sql.renew,
            &[&column::key(key), &fence_column(fence), &lease, &ttl],
        )
        .await
    }

    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        let ttl = millis(self.ttl);
        self.owned(
            "complete",
            &self.sql.finish,
            &[&column::key(key), &fence_column(fence), &"completed", &ttl],
        )
        .await
    }

    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        let ttl = millis(self.ttl);
        self.owned(
            "mark_dead_lettered",
            &self.sql.finish,
            &[
                &column::key(key),
                &fence_column(fence),
                &"dead_lettered",
                &ttl,
            ],
        )
        .await
    }

    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let (failed, ttl) = (failed_runs.map(int), millis(self.ttl));
        self.owned(
            "release",
            &self.sql.release,
            &[&column::key(key), &fence_column(fence), &failed, &ttl],
        )
        .await
        .map(drop)
    }

    async fn release_with_letter(
        &self,
        key: &Key,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let ttl = millis(self.ttl);
        self.owned(
            "release_with_letter",
            &self.sql.release_with_letter,
            &[
                &column::key(key),
                &fence_column(fence),
                &int(letter.attempts),
                &letter.kind.as_str(),
                &column::text(&letter.message),
                &letter.first_failure,
                &letter.last_failure,
                &ttl,
            ],
        )
        .await
    }

    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        if claims.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = claims
            .iter()
            .map(|c| column::key(c.key).into_owned())
            .collect();
        let owners: Vec<String> = claims
            .iter()
            .map(|c| column::text(c.owner).into_owned())
            .collect();
        let replays: Vec<i32> = claims.iter().map(|c| int(c.replay)).collect();
        let (lease_ms, ttl) = (millis(lease), millis(self.ttl));
        let rows = async {
            let mut conn = self.conn().await?;
            conn.query(
                "claim_many",
                self.timeout,
                &self.sql.claim_many,
                &[&keys, &owners, &lease_ms, &replays, &ttl],
            )
            .await
        }
        .await;
        let rows = match rows {
            Ok(rows) if rows.len() == claims.len() => rows,
            Ok(rows) => {
                let error = PostgresError::Unexpected {
                    op: "claim_many",
                    what: format!("{} rows for {} claims", rows.len(), claims.len()),
                };
                return each_fails(claims.len(), &error);
            }
            Err(error) => return each_fails(claims.len(), &error),
        };
        let mut answers = Vec::with_capacity(claims.len());
        for (row, claim) in rows.iter().zip(claims) {
            let answer = match batch_claim(row, lease, claim.replay) {
                Ok(Some(answer)) => Ok(answer),
                // The row changed under the statement: the single claim
                // reads it again (rare: a race with another worker).
                Ok(None) => {
                    self.claim(claim.key, claim.owner, lease, claim.replay)
                        .await
                }
                Err(error) => Err(error.into()),
            };
            answers.push(answer);
        }
        answers
    }

    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        self.owned_many("renew_many", &self.sql.renew_many, held, &millis(lease))
            .await
    }

    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        self.owned_many("complete_many", &self.sql.finish_many, held, &"completed")
            .await
    }
}
