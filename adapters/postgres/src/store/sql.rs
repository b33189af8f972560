//! The store's SQL, generated once per table name.
//!
//! Times come from the server's clock (`now()`), so workers with skewed
//! clocks agree on leases. A row is "fresh" (as if absent) when its
//! `expires_at` passed; in progress, `expires_at` is the lease's end plus
//! the TTL, so an abandoned lease is forgotten a TTL after it ran out.
//!
//! Fencing: a claim's token is the larger of the row's last token + 1 and
//! the server clock in microseconds, so it grows across a key's lifetimes
//! too. The owner is stored as `<owner>@<fence>`, and an operation is
//! allowed only if both `fence` and that suffix match: a takeover by a
//! worker of the first layout (which rewrites `owner`, knows no `fence`)
//! fences a later worker out during a rolling upgrade.

use crate::TableName;

/// The statements for one table.
#[derive(Clone, Debug)]
pub(crate) struct Statements {
    /// The schema's versions: step `n` brings the table to version `n`.
    pub(crate) steps: Vec<String>,
    pub(crate) claim: String,
    pub(crate) claim_many: String,
    pub(crate) inspect: String,
    pub(crate) renew: String,
    pub(crate) finish: String,
    pub(crate) release: String,
    pub(crate) release_with_letter: String,
    pub(crate) renew_many: String,
    pub(crate) finish_many: String,
    pub(crate) lock_held: String,
    pub(crate) purge: String,
}

/// The lease `fence` (a `bigint` expression) is held: the row (its columns
/// prefixed `row`) is in progress under that token, and its owner carries it.
fn held(row: &str, fence: &str) -> String {
    format!(
        "{row}state = 'in_progress' AND {row}fence = {fence} AND right({row}owner, length({fence}::text) + 1) = '@' || {fence}::text"
    )
}

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table;
        let expires_index = table.derived("expires_at_idx");
        // The token of a new lease (the row's last + 1 is applied on conflict);
        // now() is stable within the statement, so both uses agree.
        let clock = "(extract(epoch FROM now()) * 1000000)::bigint";
        // The claimed row's letter is pending: recorded for its redrive
        // (a newer one starts without it) in this lifetime of the row (an
        // expired row restarts, `created_at` with it).
        let pending = "e.letter_kind IS NOT NULL AND e.state = 'in_progress' AND e.letter_replay = e.replay AND e.letter_at >= e.created_at";
        // The time left on a row's lease, in whole milliseconds.
        let remaining = "greatest(ceil(extract(epoch FROM (lease_until - now())) * 1000), 0)::bigint AS remaining_ms";
        // A claim's takeover of an existing row, and what it returns:
        // whose owner (a `text` expression) takes it over.
        let take_over = |owner: &str| {
            format!(
                "ON CONFLICT (key) DO UPDATE SET
    state = 'in_progress',
    fence = greatest(e.fence + 1, EXCLUDED.fence),
    owner = {owner} || '@' || greatest(e.fence + 1, EXCLUDED.fence)::text,
    crashed = e.state = 'in_progress' AND e.expires_at > now(),
    lease_until = EXCLUDED.lease_until,
    failed_runs = CASE
        WHEN e.expires_at <= now() OR EXCLUDED.replay > e.replay THEN 0
        WHEN e.state = 'in_progress' THEN e.failed_runs + 1
        ELSE e.failed_runs END,
    replay = CASE
        WHEN e.expires_at <= now() THEN EXCLUDED.replay
        ELSE greatest(e.replay, EXCLUDED.replay) END,
    created_at = CASE
        WHEN e.expires_at <= now() THEN now()
        ELSE e.created_at END,
    updated_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE e.expires_at <= now()
   OR e.state = 'idle'
   OR (e.state = 'in_progress' AND e.lease_until <= now())
   OR (e.state = 'dead_lettered' AND EXCLUDED.replay = e.replay + 1)
RETURNING e.failed_runs, e.fence, e.crashed,
    CASE WHEN {pending} THEN e.letter_kind END AS letter,
    e.letter_error, e.letter_attempts, e.letter_first, e.letter_last"
            )
        };
        let forget = "letter_kind = NULL, letter_error = NULL, letter_attempts = NULL, letter_first = NULL, letter_last = NULL, letter_replay = NULL, letter_at = NULL";
        Statements {
            steps: vec![
                // 1: the first release's table.
                format!(
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
CREATE INDEX IF NOT EXISTS {expires_index} ON {t} (expires_at);"
                ),
                // 2: fencing tokens, and whether the lease took over a crashed run.
                format!(
                    "ALTER TABLE {t}
    ADD COLUMN IF NOT EXISTS fence   bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS crashed boolean NOT NULL DEFAULT false;"
                ),
                // 3: a dead letter still to be written (its write failed): the
                // failure it carries, the redrive it belongs to, when recorded.
                format!(
                    "ALTER TABLE {t}
    ADD COLUMN IF NOT EXISTS letter_kind     text,
    ADD COLUMN IF NOT EXISTS letter_error    text,
    ADD COLUMN IF NOT EXISTS letter_attempts integer,
    ADD COLUMN IF NOT EXISTS letter_first    timestamptz,
    ADD COLUMN IF NOT EXISTS letter_last     timestamptz,
    ADD COLUMN IF NOT EXISTS letter_replay   integer,
    ADD COLUMN IF NOT EXISTS letter_at       timestamptz;"
                ),
            ],
            // $1 key, $2 owner, $3 lease ms, $4 replay, $5 ttl ms.
            claim: format!(
                "INSERT INTO {t} AS e (key, state, owner, fence, crashed, lease_until, failed_runs, replay, expires_at)
VALUES ($1, 'in_progress', $2 || '@' || {clock}::text, {clock}, false,
        now() + $3::bigint * interval '1 millisecond', 0, $4,
        now() + ($3::bigint + $5::bigint) * interval '1 millisecond')
{}",
                take_over("$2")
            ),
            // $1 keys, $2 owners, $3 lease ms, $4 replays, $5 ttl ms; one row
            // per item, in order: the claim's columns if it won (as `claim`
            // returns them), whether it won, whether another item of the
            // batch won its key, then the row as it was before the statement
            // (`inspect`'s columns) for the items that did not win. A key twice
            // in the batch is inserted once (its first item); the rows are
            // taken in key order, so concurrent batches wait for each other
            // rather than deadlock.
            claim_many: format!(
                "WITH b AS (
    SELECT key, owner, replay, ord,
           row_number() OVER (PARTITION BY key ORDER BY ord) = 1 AS first
    FROM unnest($1::text[], $2::text[], $4::integer[]) WITH ORDINALITY AS b(key, owner, replay, ord)
), won AS (
    INSERT INTO {t} AS e (key, state, owner, fence, crashed, lease_until, failed_runs, replay, expires_at)
    SELECT b.key, 'in_progress', b.owner || '@' || {clock}::text, {clock}, false,
           now() + $3::bigint * interval '1 millisecond', 0, b.replay,
           now() + ($3::bigint + $5::bigint) * interval '1 millisecond'
    FROM b WHERE b.first ORDER BY b.key
    {}, e.key
)
SELECT w.failed_runs, w.fence, w.crashed, w.letter, w.letter_error, w.letter_attempts,
       w.letter_first, w.letter_last,
       w.key IS NOT NULL AS won,
       EXISTS (SELECT 1 FROM won x WHERE x.key = b.key) AS taken,
       o.state, o.replay, o.expires_at <= now() AS expired, {remaining}
FROM b
LEFT JOIN won w ON w.key = b.key AND b.first
LEFT JOIN {t} o ON o.key = b.key
ORDER BY b.ord",
                // The owner without the `@<fence>` the insert gave it.
                take_over(&format!("left(EXCLUDED.owner, -(length({clock}::text) + 1))"))
            ),
            // $1 key.
            inspect: format!(
                "SELECT state, replay, expires_at <= now() AS expired, {remaining}
FROM {t} WHERE key = $1"
            ),
            // $1 key, $2 fence, $3 lease ms, $4 ttl ms.
            renew: format!(
                "UPDATE {t} SET lease_until = now() + $3::bigint * interval '1 millisecond',
    expires_at = now() + ($3::bigint + $4::bigint) * interval '1 millisecond',
    updated_at = now()
WHERE key = $1 AND {}",
                held("", "$2::bigint")
            ),
            // $1 key, $2 fence, $3 final state, $4 ttl ms.
            finish: format!(
                "UPDATE {t} SET state = $3, owner = NULL, lease_until = NULL, updated_at = now(), {forget},
    expires_at = now() + $4::bigint * interval '1 millisecond'
WHERE key = $1 AND {}",
                held("", "$2::bigint")
            ),
            // $1 key, $2 fence, $3 failed runs or NULL, $4 ttl ms.
            release: format!(
                "UPDATE {t} SET state = 'idle', owner = NULL, lease_until = NULL,
    failed_runs = coalesce($3::integer, failed_runs), updated_at = now(),
    expires_at = now() + $4::bigint * interval '1 millisecond'
WHERE key = $1 AND {}",
                held("", "$2::bigint")
            ),
            // $1 key, $2 fence, $3 attempts, $4 kind, $5 error text,
            // $6 first and $7 last failure, $8 ttl ms.
            release_with_letter: format!(
                "UPDATE {t} SET state = 'idle', owner = NULL, lease_until = NULL,
    failed_runs = $3::integer, letter_kind = $4, letter_error = $5, letter_attempts = $3::integer,
    letter_first = $6, letter_last = $7, letter_replay = replay, letter_at = now(),
    updated_at = now(), expires_at = now() + $8::bigint * interval '1 millisecond'
WHERE key = $1 AND {}",
                held("", "$2::bigint")
            ),
            // $1 keys, $2 fences, $3 lease ms, $4 ttl ms; the rows renewed.
            renew_many: format!(
                "UPDATE {t} AS e SET lease_until = now() + $3::bigint * interval '1 millisecond',
    expires_at = now() + ($3::bigint + $4::bigint) * interval '1 millisecond',
    updated_at = now()
FROM unnest($1::text[], $2::bigint[]) AS b(key, fence)
WHERE e.key = b.key AND {}
RETURNING e.key, e.fence",
                held("e.", "b.fence")
            ),
            // $1 keys, $2 fences, $3 final state, $4 ttl ms; the rows settled.
            finish_many: format!(
                "UPDATE {t} AS e SET state = $3, owner = NULL, lease_until = NULL, updated_at = now(), {forget},
    expires_at = now() + $4::bigint * interval '1 millisecond'
FROM unnest($1::text[], $2::bigint[]) AS b(key, fence)
WHERE e.key = b.key AND {}
RETURNING e.key, b.fence",
                held("e.", "b.fence")
            ),
            // $1 key, $2 fence; a row if the lease is held, locked until the
            // transaction ends (a takeover waits for it).
            lock_held: format!(
                "SELECT 1 FROM {t} WHERE key = $1 AND {} FOR UPDATE",
                held("", "$2::bigint")
            ),
            // $1 batch size.
            purge: format!(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= now() LIMIT $1::bigint)"
            ),
        }
    }
}
