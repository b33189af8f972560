//! Versioned schema migrations: idempotent, and safe from many workers at once.
//!
//! Each table this crate owns has a list of steps; step `n` takes the table
//! from version `n - 1` to `n`. The version a table is at lives in
//! `backstop_schema_version` (one row per table, in the table's schema).
//! Version 1 of every table is the `CREATE TABLE IF NOT EXISTS` of the first
//! release, which wrote no version row: such a table counts as version 0,
//! its step 1 changes nothing, and the later steps bring it up to date in
//! place. A table at a version newer than this code knows is refused
//! ([`PostgresError::SchemaTooNew`]): an older worker never writes a layout
//! it does not understand.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::conn::Conn;
use crate::{PostgresError, TableName};

/// The name of the version table, in the schema of the tables it tracks.
pub(crate) const VERSION_TABLE: &str = "backstop_schema_version";

/// The version table next to `table`.
pub(crate) fn version_table(table: &TableName) -> TableName {
    table.sibling(VERSION_TABLE)
}

/// The DDL of the version table.
fn version_ddl(table: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
    object     text        PRIMARY KEY,
    version    integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);",
        version_table(table)
    )
}

/// Every step's DDL in order, as one idempotent script (for users who apply
/// migrations with their own tool: it yields the latest layout from any
/// earlier one, version row included).
pub(crate) fn script(table: &TableName, steps: &[String]) -> String {
    let version = steps.len();
    format!(
        "{}\n{}\nINSERT INTO {} (object, version) VALUES ('{table}', {version})
ON CONFLICT (object) DO UPDATE SET version = greatest({}.version, EXCLUDED.version), updated_at = now();\n",
        version_ddl(table),
        steps.join("\n"),
        version_table(table),
        version_table(table),
    )
}

/// The version `table` is at (0: no row, a table of the first release or none).
pub(crate) async fn version(
    pool: &Pool,
    table: &TableName,
    timeout: Duration,
) -> Result<i32, PostgresError> {
    let mut conn = Conn::checkout(pool, timeout).await?;
    let exists = conn
        .query(
            "schema version",
            timeout,
            "SELECT to_regclass($1) IS NOT NULL",
            &[&version_table(table).to_string()],
        )
        .await?;
    if !exists.first().is_some_and(|row| row.get::<_, bool>(0)) {
        return Ok(0);
    }
    let sql = format!(
        "SELECT version FROM {} WHERE object = $1",
        version_table(table)
    );
    let rows = conn
        .query("schema version", timeout, &sql, &[&table.to_string()])
        .await?;
    Ok(rows.first().map_or(0, |row| row.get(0)))
}

/// A failed query while migrating `table`, as [`PostgresError::Migrate`].
pub(crate) fn failed(table: &TableName, error: PostgresError) -> PostgresError {
    match error {
        PostgresError::Query { source, .. } => PostgresError::Migrate {
            table: table.to_string(),
            source,
        },
        other => other,
    }
}

/// Brings `table` to the latest of `steps`, in one transaction serialised
/// across workers by an advisory lock named after the schema's version
/// table: every table of a schema shares that table, and concurrent
/// `CREATE … IF NOT EXISTS` of one table can otherwise fail on the
/// catalog's unique index (two tables of one schema migrated at once for
/// the first time did). Migrations are rare; one schema's run one at a
/// time. Returns the version it is at.
pub(crate) async fn run(
    pool: &Pool,
    table: &TableName,
    steps: &[String],
    timeout: Duration,
) -> Result<i32, PostgresError> {
    let timeout = timeout.max(Duration::from_secs(30));
    let latest = i32::try_from(steps.len()).unwrap_or(i32::MAX);
    let mut conn = Conn::checkout(pool, timeout).await?;
    conn.set_in_transaction(true);
    let failed = |error| failed(table, error);
    let begin = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('backstop-migrate:{}'));\n{}",
        version_table(table),
        version_ddl(table)
    );
    conn.batch("migrate", timeout, &begin)
        .await
        .map_err(failed)?;
    let read = format!(
        "SELECT version FROM {} WHERE object = $1",
        version_table(table)
    );
    let name = table.to_string();
    let rows = conn
        .query("migrate", timeout, &read, &[&name])
        .await
        .map_err(failed)?;
    let at: i32 = rows.first().map_or(0, |row| row.get(0));
    if at > latest {
        conn.batch("migrate", timeout, "ROLLBACK").await?;
        conn.set_in_transaction(false);
        conn.release();
        return Err(PostgresError::SchemaTooNew {
            table: name,
            found: at,
            known: latest,
        });
    }
    for step in steps.iter().skip(usize::try_from(at).unwrap_or(0)) {
        conn.batch("migrate", timeout, step).await.map_err(failed)?;
    }
    let write = format!(
        "INSERT INTO {} (object, version) VALUES ($1, $2)
ON CONFLICT (object) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
        version_table(table)
    );
    conn.execute("migrate", timeout, &write, &[&name, &latest])
        .await
        .map_err(failed)?;
    conn.batch("migrate", timeout, "COMMIT")
        .await
        .map_err(failed)?;
    conn.set_in_transaction(false);
    conn.release();
    Ok(latest)
}
