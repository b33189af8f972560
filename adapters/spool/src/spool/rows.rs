//! The spool file's tables, and their rows read back as records.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::Message;
use backstop::message::{Headers, Meta};
use bytes::Bytes;
use rusqlite::{Connection, params};

use crate::SpoolError;
use crate::record::{RefusedRecord, SpooledRecord};

/// The schema version this build writes (`PRAGMA user_version`): 2 added
/// the `refused` table (version 1 files are upgraded at open).
pub(super) const SCHEMA_VERSION: i64 = 2;

/// The spool's tables: the records waiting, and those set aside.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT,
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    msg_key     BLOB,
    payload     BLOB NOT NULL,
    headers     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    timestamp_ms INTEGER,
    spooled_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    seq         INTEGER PRIMARY KEY,
    destination TEXT,
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    msg_key     BLOB,
    payload     BLOB NOT NULL,
    headers     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    timestamp_ms INTEGER,
    spooled_ms  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    error       TEXT NOT NULL,
    refused_ms  INTEGER NOT NULL
);
";

/// The refused records, newest last; shared by the spool's thread and the
/// read-only listing.
const SELECT_REFUSED: &str = "
SELECT seq, destination, source, message_id, msg_key, size, spooled_ms, reason, error, refused_ms
FROM refused ORDER BY seq LIMIT ?1";

/// Milliseconds since the epoch (0 before it).
pub(super) fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the epoch.
pub(super) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A count as SQLite's integer.
pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// SQLite's integer as a count.
pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The reason of a record whose row could not be decoded.
pub(super) const UNREADABLE: &str = "unreadable";

/// One `records` row as a [`SpooledRecord`].
pub(super) fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<SpooledRecord> {
    let headers: String = r.get(6)?;
    let headers: Headers = serde_json::from_str(&headers).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(SpooledRecord {
        seq: to_u64(r.get(0)?),
        destination: r.get(1)?,
        message: Message {
            payload: Bytes::from(r.get::<_, Vec<u8>>(5)?),
            key: r.get::<_, Option<Vec<u8>>>(4)?.map(Bytes::from),
            headers,
            meta: Meta {
                source: r.get(2)?,
                message_id: r.get(3)?,
                attempt: 1,
                timestamp: r.get::<_, Option<i64>>(7)?.map(from_ms),
                ..Meta::default()
            },
        },
        spooled_at: from_ms(r.get(8)?),
    })
}

/// Up to `limit` refused records, oldest first.
pub(crate) fn refused(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<RefusedRecord>> {
    let mut stmt = conn.prepare_cached(SELECT_REFUSED)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![limit], |r| {
        Ok(RefusedRecord {
            seq: to_u64(r.get(0)?),
            destination: r.get(1)?,
            source: r.get(2)?,
            message_id: r.get(3)?,
            key: r.get::<_, Option<Vec<u8>>>(4)?.map(Bytes::from),
            size: to_u64(r.get(5)?),
            spooled_at: from_ms(r.get(6)?),
            reason: r.get(7)?,
            error: r.get(8)?,
            refused_at: from_ms(r.get(9)?),
        })
    })?;
    rows.collect()
}

/// Reads the refused records of the spool at `path` without opening it for
/// writing (no lock: the publisher that owns it may be running).
pub(crate) fn read_refused(path: &Path, limit: usize) -> Result<Vec<RefusedRecord>, SpoolError> {
    let storage = |source| SpoolError::Storage {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Err(SpoolError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no spool file here"),
        });
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(storage)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
    let has_table: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'refused'",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    if !has_table {
        // A spool written before refused records existed has none.
        return Ok(Vec::new());
    }
    refused(&conn, limit).map_err(storage)
}
