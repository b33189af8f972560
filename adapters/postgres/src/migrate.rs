//! Creating tables: idempotent, and safe from many workers at once.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::conn::Conn;
use crate::{PostgresError, TableName};

/// Runs `ddl` for `table` in one transaction, serialised across workers by
/// an advisory lock named after the table (concurrent `CREATE … IF NOT
/// EXISTS` of one table can otherwise fail on the catalog's unique index).
pub(crate) async fn run(
    pool: &Pool,
    table: &TableName,
    ddl: &str,
    timeout: Duration,
) -> Result<(), PostgresError> {
    let timeout = timeout.max(Duration::from_secs(30));
    let mut conn = Conn::checkout(pool, timeout).await?;
    conn.set_in_transaction(true);
    let script = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('backstop-migrate:{table}'));\n{ddl}\nCOMMIT;"
    );
    match conn.batch("migrate", timeout, &script).await {
        Ok(()) => {
            conn.set_in_transaction(false);
            conn.release();
            Ok(())
        }
        Err(PostgresError::Query { source, .. }) => Err(PostgresError::Migrate {
            table: table.to_string(),
            source,
        }),
        Err(other) => Err(other),
    }
}
