//! The layout marker of a table: a row `<table> layout` in
//! `backstop_schema_version` (`version` 2: per-consumer keyspaces; with
//! `migrate_until` set, legacy keys are read until then). A table with rows
//! and no such row was filled by an earlier release (global keys, or inbox
//! rows under the consumer name as given).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backstop::idempotency::layout::{self, KeyLayout, Layout, LayoutAction};
use deadpool_postgres::Pool;

use crate::conn::Conn;
use crate::migrate::version_table;
use crate::{PostgresError, TableName};

/// A table's key layout: the user's choice, and the layout found on first
/// use (shared by clones).
#[derive(Clone, Debug, Default)]
pub(crate) struct LayoutCell {
    choice: KeyLayout,
    found: Arc<tokio::sync::OnceCell<Layout>>,
}

impl LayoutCell {
    /// Nothing found yet; `choice` decides on first use.
    pub(crate) fn new(choice: KeyLayout) -> Self {
        LayoutCell {
            choice,
            found: Arc::default(),
        }
    }

    /// The user's choice.
    pub(crate) fn choice(&self) -> KeyLayout {
        self.choice
    }

    /// The layout of `table`: [`open`]ed on first use, then remembered.
    pub(crate) async fn get(
        &self,
        pool: &Pool,
        table: &TableName,
        timeout: Duration,
    ) -> Result<Layout, PostgresError> {
        self.found
            .get_or_try_init(|| open(pool, table, self.choice, timeout))
            .await
            .copied()
    }
}

/// The marker's `version` for per-consumer keyspaces.
const KEYSPACED: i32 = 2;

/// Reads `table`'s marker (adding the `migrate_until` column to the version
/// table if needed), looks for rows if there is none, decides with `choice`
/// and writes the marker when the new layout starts here; one transaction,
/// serialised across workers by an advisory lock. The table must exist.
pub(crate) async fn open(
    pool: &Pool,
    table: &TableName,
    choice: KeyLayout,
    timeout: Duration,
) -> Result<Layout, PostgresError> {
    let timeout = timeout.max(Duration::from_secs(30));
    let versions = version_table(table);
    let object = format!("{table} layout");
    let mut conn = Conn::checkout(pool, timeout).await?;
    conn.set_in_transaction(true);
    let failed = |error| crate::migrate::failed(table, error);
    let begin = format!(
        "BEGIN;
SELECT pg_advisory_xact_lock(hashtext('backstop-layout:{table}'));
ALTER TABLE {versions} ADD COLUMN IF NOT EXISTS migrate_until timestamptz;"
    );
    conn.batch("layout", timeout, &begin)
        .await
        .map_err(failed)?;
    let read = format!(
        "SELECT version, (extract(epoch FROM migrate_until) * 1000)::bigint FROM {versions} WHERE object = $1"
    );
    let marker = |rows: Vec<tokio_postgres::Row>| -> Option<Layout> {
        let row = rows.first()?;
        let until: Option<i64> = row.get(1);
        Some(match until {
            Some(ms) => Layout::Migrating {
                until: SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0).unsigned_abs()),
            },
            None => Layout::Keyspaced,
        })
    };
    let found = marker(
        conn.query("layout", timeout, &read, &[&object])
            .await
            .map_err(failed)?,
    );
    let holds_rows = if found.is_none() {
        let any = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        let rows = conn
            .query("layout", timeout, &any, &[])
            .await
            .map_err(failed)?;
        rows.first().is_some_and(|row| row.get::<_, bool>(0))
    } else {
        false
    };
    let decided = layout::decide(choice, found, holds_rows, &format!("the table {table}"));
    let window = match decided {
        Ok(LayoutAction::Use(layout)) => {
            conn.batch("layout", timeout, "COMMIT")
                .await
                .map_err(failed)?;
            conn.set_in_transaction(false);
            conn.release();
            return Ok(layout);
        }
        Ok(LayoutAction::MarkKeyspaced) => None,
        Ok(LayoutAction::MarkMigrating(window)) => {
            Some(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
        }
        Err(error) => {
            conn.batch("layout", timeout, "ROLLBACK").await?;
            conn.set_in_transaction(false);
            conn.release();
            return Err(error.into());
        }
    };
    let write = format!(
        "INSERT INTO {versions} (object, version, migrate_until)
VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
ON CONFLICT (object) DO NOTHING"
    );
    conn.execute("layout", timeout, &write, &[&object, &KEYSPACED, &window])
        .await
        .map_err(failed)?;
    let layout = marker(
        conn.query("layout", timeout, &read, &[&object])
            .await
            .map_err(failed)?,
    )
    .unwrap_or(Layout::Keyspaced);
    conn.batch("layout", timeout, "COMMIT")
        .await
        .map_err(failed)?;
    conn.set_in_transaction(false);
    conn.release();
    tracing::info!(%table, ?layout, "idempotency key layout");
    Ok(layout)
}
