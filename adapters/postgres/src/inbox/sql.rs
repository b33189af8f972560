//! The inbox's SQL, generated once per table name.

use crate::TableName;

/// The inbox's SQL for one table.
#[derive(Debug)]
pub(super) struct Statements {
    /// The schema's versions: step `n` brings the table to version `n`.
    pub(super) steps: Vec<String>,
    pub(super) insert: String,
    /// Records an attempt's outputs in its row (`$1` consumer, `$2` key, `$3` outputs).
    pub(super) record_outputs: String,
    /// The outputs recorded in a row (`$1` consumer, `$2` key).
    pub(super) outputs: String,
    pub(super) contains: String,
    pub(super) purge: String,
}

impl Statements {
    /// The statements for `table`.
    pub(super) fn new(table: &TableName) -> Self {
        let t = table;
        let index = table.derived("processed_at_idx");
        Statements {
            steps: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
    consumer     text        NOT NULL,
    key          text        NOT NULL,
    message_id   text        NOT NULL,
    source       text        NOT NULL,
    attempt      integer     NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, key)
);
CREATE INDEX IF NOT EXISTS {index} ON {t} (processed_at);"
                ),
                // Version 2: a handler's outputs in a source's transaction
                // (Kafka exactly-once), re-emitted by a skipped redelivery.
                format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS outputs text;"),
            ],
            insert: format!(
                "INSERT INTO {t} (consumer, key, message_id, source, attempt) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (consumer, key) DO NOTHING"
            ),
            record_outputs: format!(
                "UPDATE {t} SET outputs = $3 WHERE consumer = $1 AND key = $2"
            ),
            outputs: format!("SELECT outputs FROM {t} WHERE consumer = $1 AND key = $2"),
            contains: format!("SELECT 1 FROM {t} WHERE consumer = $1 AND key = $2"),
            purge: format!(
                "DELETE FROM {t} WHERE (consumer, key) IN (
    SELECT consumer, key FROM {t} WHERE processed_at < now() - $1::bigint * interval '1 millisecond'
    LIMIT $2::bigint)"
            ),
        }
    }
}
