//! The store's SQL, generated once per table name.
//!
//! Times come from the server's clock (`now()`), so workers with skewed
//! clocks agree on leases. A row is "fresh" (as if absent) when it is not in
//! progress and its `expires_at` passed; in progress, `expires_at` is the
//! lease's end plus the TTL, so an abandoned lease is forgotten a TTL after
//! it ran out.

use crate::TableName;

/// The statements for one table.
#[derive(Clone, Debug)]
pub(crate) struct Statements {
    pub(crate) migrate: String,
    pub(crate) claim: String,
    pub(crate) inspect: String,
    pub(crate) renew: String,
    pub(crate) finish: String,
    pub(crate) release: String,
    pub(crate) purge: String,
}

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table;
        let expires_index = table.derived("expires_at_idx");
        Statements {
            migrate: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    key         text        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('in_progress', 'idle', 'completed', 'dead_lettered')),
    owner       text,
    lease_until timestamptz,
    failed_runs integer     NOT NULL DEFAULT 0 CHECK (failed_runs >= 0),
    replay      integer     NOT NULL DEFAULT 0 CHECK (replay >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {expires_index} ON {t} (expires_at);
"
            ),
            // $1 key, $2 owner, $3 lease ms, $4 replay, $5 ttl ms.
            claim: format!(
                "INSERT INTO {t} AS e (key, state, owner, lease_until, failed_runs, replay, expires_at)
VALUES ($1, 'in_progress', $2, now() + $3::bigint * interval '1 millisecond', 0, $4,
        now() + ($3::bigint + $5::bigint) * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET
    state = 'in_progress',
    owner = EXCLUDED.owner,
    lease_until = EXCLUDED.lease_until,
    failed_runs = CASE
        WHEN (e.state <> 'in_progress' AND e.expires_at <= now()) OR EXCLUDED.replay > e.replay THEN 0
        ELSE e.failed_runs END,
    replay = CASE
        WHEN e.state <> 'in_progress' AND e.expires_at <= now() THEN EXCLUDED.replay
        ELSE greatest(e.replay, EXCLUDED.replay) END,
    created_at = CASE
        WHEN e.state <> 'in_progress' AND e.expires_at <= now() THEN now()
        ELSE e.created_at END,
    updated_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE (e.state <> 'in_progress' AND e.expires_at <= now())
   OR e.state = 'idle'
   OR (e.state = 'in_progress' AND e.lease_until <= now())
   OR (e.state = 'dead_lettered' AND EXCLUDED.replay > e.replay)
RETURNING e.failed_runs"
            ),
            // $1 key.
            inspect: format!(
                "SELECT state, replay, expires_at <= now() AS expired,
       greatest(ceil(extract(epoch FROM (lease_until - now())) * 1000), 0)::bigint AS remaining_ms
FROM {t} WHERE key = $1"
            ),
            // $1 key, $2 owner, $3 lease ms, $4 ttl ms.
            renew: format!(
                "UPDATE {t} SET lease_until = now() + $3::bigint * interval '1 millisecond',
    expires_at = now() + ($3::bigint + $4::bigint) * interval '1 millisecond',
    updated_at = now()
WHERE key = $1 AND state = 'in_progress' AND owner = $2"
            ),
            // $1 key, $2 owner, $3 final state, $4 ttl ms.
            finish: format!(
                "UPDATE {t} SET state = $3, owner = NULL, lease_until = NULL, updated_at = now(),
    expires_at = now() + $4::bigint * interval '1 millisecond'
WHERE key = $1 AND state = 'in_progress' AND owner = $2"
            ),
            // $1 key, $2 owner, $3 failed runs or NULL, $4 ttl ms.
            release: format!(
                "UPDATE {t} SET state = 'idle', owner = NULL, lease_until = NULL,
    failed_runs = coalesce($3::integer, failed_runs), updated_at = now(),
    expires_at = now() + $4::bigint * interval '1 millisecond'
WHERE key = $1 AND state = 'in_progress' AND owner = $2"
            ),
            // $1 batch size.
            purge: format!(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= now() LIMIT $1::bigint)"
            ),
        }
    }
}
