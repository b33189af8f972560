//! The outbox's SQL, generated once per table name.

use crate::TableName;

/// The outbox's SQL for one table.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) steps: Vec<String>,
    pub(crate) key_lock: String,
    pub(crate) restore: String,
    pub(crate) insert: String,
    pub(crate) leader_lock: String,
    pub(crate) read: String,
    pub(crate) remove: String,
    pub(crate) set_aside: String,
    pub(crate) high_water: String,
    pub(crate) pending: String,
    pub(crate) refused: String,
    pub(crate) retry_refused: String,
}

impl Statements {
    /// The statements for `table`.
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table;
        let index = table.derived("pending_idx");
        let unit_index = table.derived("unit_idx");
        // Locks are named after the table's oid: tables of one name in
        // two schemas never share them.
        let name = t.to_string().replace('\'', "''");
        Statements {
            steps: vec![format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    seq            bigserial   PRIMARY KEY,
    destination    text        NOT NULL,
    source         text        NOT NULL,
    message_id     text        NOT NULL,
    msg_key        bytea,
    unit           text        NOT NULL,
    payload        bytea       NOT NULL,
    headers        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    refused_at     timestamptz,
    refused_reason text,
    refused_error  text
);
CREATE INDEX IF NOT EXISTS {index} ON {t} (seq) WHERE refused_at IS NULL;
CREATE INDEX IF NOT EXISTS {unit_index} ON {t} (unit, seq) WHERE refused_at IS NULL;"
            )],
            // The key's lock, waited for at most `$3` (`lock_timeout`, set
            // for this statement's wait and put back by the insert that
            // follows: returns the setting it replaced), so a wait that
            // runs out fails on the server (55P03) instead of living on.
            key_lock: format!(
                "WITH before AS (SELECT current_setting('lock_timeout') AS setting),
      bounded AS (SELECT set_config('lock_timeout', $3, true) FROM before)
SELECT before.setting, pg_advisory_xact_lock(hashtextextended('backstop-outbox:' || '{name}'::regclass::oid || ':' || $1 || ':' || encode($2::bytea, 'hex'), 0))::text
FROM before, bounded"
            ),
            restore: "SELECT set_config('lock_timeout', $1, true)".to_owned(),
            insert: format!(
                "INSERT INTO {t} (destination, source, message_id, msg_key, unit, payload, headers)
VALUES ($1, $2, $3, $4, $1 || ':' || coalesce('k' || encode($4::bytea, 'hex'), '-'), $5, $6) RETURNING seq"
            ),
            leader_lock: format!(
                "SELECT pg_try_advisory_lock(hashtextextended('backstop-outbox-relay:' || '{name}'::regclass::oid, 0))"
            ),
            read: format!(
                "SELECT seq, destination, source, message_id, msg_key, payload, headers, created_at
FROM {t} o WHERE seq > $1 AND refused_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM {t} p
                  WHERE p.unit = o.unit AND p.seq <= $1 AND p.refused_at IS NULL)
ORDER BY seq LIMIT $2"
            ),
            remove: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            set_aside: format!(
                "UPDATE {t} SET refused_at = now(), refused_reason = $2, refused_error = $3 WHERE seq = $1"
            ),
            pending: format!("SELECT count(*) FROM {t} WHERE refused_at IS NULL"),
            high_water: format!("SELECT max(seq) FROM {t}"),
            refused: format!(
                "SELECT seq, destination, source, message_id, msg_key, payload, created_at,
       refused_reason, refused_error, refused_at
FROM {t} WHERE refused_at IS NOT NULL ORDER BY seq LIMIT $1"
            ),
            retry_refused: format!(
                "UPDATE {t} SET refused_at = NULL, refused_reason = NULL, refused_error = NULL
WHERE seq = $1 AND refused_at IS NOT NULL"
            ),
        }
    }
}
