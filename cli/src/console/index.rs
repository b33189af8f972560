//! [`Index`]: a DLQ's letters in a local SQLite file, so a page of a DLQ of
//! 100,000 letters is one indexed query, not a walk of the broker.
//!
//! One file per DLQ under the state directory. A row per letter (per
//! message id on RabbitMQ; per message id and replay count on Kafka, the
//! library's letter keys) holds the fields a page filters and shows, its
//! copy count, its state (`replayed`, `purged`, or live), and the letter in
//! the export's JSON form (every header, key and payload), which the letter
//! page and the JSON-lines export read back. The file is opened in WAL mode
//! with a capped page cache ([`CACHE_KIB`] per connection), so a page reads
//! while an indexer writes and memory does not grow with the DLQ.
//!
//! How it is kept current is the indexer's business ([`super::indexer`]):
//! Kafka's from the last offsets it read (the `offsets` table), RabbitMQ's
//! by one walk into a fresh file that then replaces the old one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::error::ConsoleError;
use super::query::{Query, SqlValue, millis};
use crate::dlq::Letter;
use crate::dlq::export::LetterJson;

/// The page cache of one index connection, in KiB.
pub const CACHE_KIB: u32 = 2048;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    id TEXT NOT NULL,
    source TEXT,
    rkey TEXT,
    kind TEXT,
    error TEXT,
    error_lc TEXT,
    attempts INTEGER,
    replayed INTEGER NOT NULL,
    first_failure TEXT,
    last_failure TEXT,
    failed_at INTEGER,
    copies INTEGER NOT NULL,
    part INTEGER,
    off INTEGER,
    state TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS letters_id ON letters (id);
CREATE INDEX IF NOT EXISTS letters_kind ON letters (kind);
CREATE INDEX IF NOT EXISTS letters_rkey ON letters (rkey);
CREATE INDEX IF NOT EXISTS letters_failed ON letters (failed_at);
CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY NOT NULL, state TEXT);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, part INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (topic, part)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL);
";

const COLUMNS: &str = "seq, id, source, rkey, kind, error, attempts, replayed, first_failure, \
                       last_failure, failed_at, copies, part, off, state";

/// One letter as the index holds it (without its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its place in the index: the order of the DLQ, and the letter page's id.
    pub seq: i64,
    /// The message id.
    pub id: String,
    /// `x-backstop-original-source`.
    pub source: Option<String>,
    /// The record key (Kafka), as text.
    pub rkey: Option<String>,
    /// `x-backstop-error-kind`.
    pub kind: Option<String>,
    /// `x-backstop-error`.
    pub error: Option<String>,
    /// `x-backstop-attempt`.
    pub attempts: Option<i64>,
    /// `x-backstop-replayed`.
    pub replayed: i64,
    /// `x-backstop-first-failure`.
    pub first_failure: Option<String>,
    /// `x-backstop-last-failure`.
    pub last_failure: Option<String>,
    /// When it failed last, in Unix milliseconds.
    pub failed_at: Option<i64>,
    /// Copies of it in the DLQ.
    pub copies: i64,
    /// Kafka: its partition.
    pub part: Option<i64>,
    /// Kafka: its offset.
    pub off: Option<i64>,
    /// `replayed` or `purged`, none while it is in the DLQ.
    pub state: Option<String>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            seq: r.get(0)?,
            id: r.get(1)?,
            source: r.get(2)?,
            rkey: r.get(3)?,
            kind: r.get(4)?,
            error: r.get(5)?,
            attempts: r.get(6)?,
            replayed: r.get(7)?,
            first_failure: r.get(8)?,
            last_failure: r.get(9)?,
            failed_at: r.get(10)?,
            copies: r.get(11)?,
            part: r.get(12)?,
            off: r.get(13)?,
            state: r.get(14)?,
        })
    }
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The rows after this `seq`.
    After(i64),
    /// The rows before this `seq`.
    Before(i64),
}

/// One page of a DLQ's letters.
#[derive(Debug, Default)]
pub struct Page {
    /// The rows, in DLQ order.
    pub rows: Vec<Row>,
    /// The cursor of the next page, if there are more rows.
    pub next: Option<i64>,
    /// The cursor of the previous page, if there are earlier rows.
    pub prev: Option<i64>,
}

/// What the overview shows of one DLQ.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Live letters.
    pub live: u64,
    /// When the oldest live letter failed (Unix ms).
    pub oldest: Option<i64>,
    /// Letters that failed since the given time, by error kind.
    pub arrived: Vec<(String, u64)>,
}

/// A DLQ's index file (see the module docs).
#[derive(Debug)]
pub struct Index {
    path: PathBuf,
    db: Mutex<Connection>,
}

fn open_db(path: &Path) -> Result<Connection, ConsoleError> {
    let db = Connection::open(path).map_err(ConsoleError::state(path.display()))?;
    db.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(ConsoleError::state(path.display()))?;
    db.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -{CACHE_KIB}; {SCHEMA}"
    ))
    .map_err(ConsoleError::state(path.display()))?;
    Ok(db)
}

impl Index {
    /// Opens (or creates) the index at `path`.
    pub fn open(path: &Path) -> Result<Self, ConsoleError> {
        Ok(Index {
            path: path.to_owned(),
            db: Mutex::new(open_db(path)?),
        })
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ConsoleError> {
        locked(&self.db, &self.path, f)
    }

    /// A writer on this index (a connection of its own, in a transaction).
    pub fn writer(&self) -> Result<Writer, ConsoleError> {
        Writer::open(&self.path)
    }

    /// Replaces this index with the file at `fresh` (a complete rebuild).
    pub fn replace_with(&self, fresh: &Path) -> Result<(), ConsoleError> {
        let mut db = self.db.lock().map_err(|_| ConsoleError::State {
            path: self.path.display().to_string(),
            reason: "a request panicked while reading it".into(),
        })?;
        // Close the old file first, then move the new one (and its WAL) in.
        *db = Connection::open_in_memory().map_err(ConsoleError::state("memory"))?;
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&self.path, ext));
        }
        std::fs::rename(fresh, &self.path).map_err(|e| ConsoleError::State {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        *db = open_db(&self.path)?;
        Ok(())
    }

    /// The rows `query` selects from `cursor` on (live ones unless `done`),
    /// at most `limit`.
    pub fn page(
        &self,
        query: &Query,
        done: bool,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, ConsoleError> {
        let (cond, mut values) = query.sql(done)?;
        let (seq_cond, order) = match cursor {
            None => ("1", "ASC"),
            Some(Cursor::After(s)) => {
                values.push(SqlValue::Integer(s));
                ("seq > ?", "ASC")
            }
            Some(Cursor::Before(s)) => {
                values.push(SqlValue::Integer(s));
                ("seq < ?", "DESC")
            }
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM letters WHERE {cond} AND {seq_cond} ORDER BY seq {order} LIMIT {}",
            limit + 1
        );
        let mut rows = self.with(|db| {
            let mut st = db.prepare(&sql)?;
            st.query_map(params_from_iter(values.iter()), Row::read)?
                .collect::<rusqlite::Result<Vec<Row>>>()
        })?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        if order == "DESC" {
            rows.reverse();
        }
        let (first, last) = (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq));
        let mut page = Page {
            rows,
            ..Page::default()
        };
        match cursor {
            Some(Cursor::Before(_)) => {
                page.prev = first.filter(|_| more);
                page.next = last;
            }
            _ => {
                page.next = last.filter(|_| more);
                page.prev = first.filter(|_| cursor.is_some());
            }
        }
        Ok(page)
    }

    /// How many rows `query` selects (live ones unless `done`).
    pub fn count(&self, query: &Query, done: bool) -> Result<u64, ConsoleError> {
        let (cond, values) = query.sql(done)?;
        let sql = format!("SELECT count(*) FROM letters WHERE {cond}");
        self.with(|db| {
            db.query_row(&sql, params_from_iter(values.iter()), |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    /// The message ids of the live letters `query` selects, at most `limit`
    /// (one more tells the caller there are more).
    pub fn ids(&self, query: &Query, limit: usize) -> Result<Vec<String>, ConsoleError> {
        let (cond, values) = query.sql(false)?;
        let sql = format!(
            "SELECT DISTINCT id FROM letters WHERE {cond} LIMIT {}",
            limit + 1
        );
        self.with(|db| {
            let mut st = db.prepare(&sql)?;
            st.query_map(params_from_iter(values.iter()), |r| r.get(0))?
                .collect()
        })
    }

    /// Live letters by a column's value (`kind` or `source`), most first.
    pub fn values(&self, column: &str) -> Result<Vec<(String, u64)>, ConsoleError> {
        let column = if column == "kind" { "kind" } else { "source" };
        let sql = format!(
            "SELECT {column}, count(*) FROM letters WHERE state IS NULL AND {column} IS NOT NULL \
             GROUP BY {column} ORDER BY count(*) DESC LIMIT 50"
        );
        self.with(|db| {
            let mut st = db.prepare(&sql)?;
            st.query_map([], |r| {
                Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
            })?
            .collect()
        })
    }

    /// One letter by `seq`, with its export JSON.
    pub fn letter(&self, seq: i64) -> Result<Option<(Row, String)>, ConsoleError> {
        self.with(|db| {
            db.query_row(
                &format!("SELECT {COLUMNS}, json FROM letters WHERE seq = ?"),
                [seq],
                |r| Ok((Row::read(r)?, r.get(15)?)),
            )
            .optional()
        })
    }

    /// The ids and replay counts of the letters `query` selects, in DLQ
    /// order, with each one's row (for a dry run), at most `limit`.
    pub fn sample(&self, query: &Query, limit: usize) -> Result<Vec<(Row, String)>, ConsoleError> {
        let (cond, values) = query.sql(false)?;
        let sql = format!(
            "SELECT {COLUMNS}, json FROM letters WHERE {cond} \
             AND seq IN (SELECT min(seq) FROM letters WHERE {cond} GROUP BY source) \
             ORDER BY seq LIMIT {limit}"
        );
        let doubled: Vec<SqlValue> = values.iter().chain(values.iter()).cloned().collect();
        self.with(|db| {
            let mut st = db.prepare(&sql)?;
            st.query_map(params_from_iter(doubled.iter()), |r| {
                Ok((Row::read(r)?, r.get(15)?))
            })?
            .collect()
        })
    }

    /// How many live letters `query` selects the loop guard would refuse
    /// (replayed `max_replays` times or more).
    pub fn refused(&self, query: &Query, max_replays: u32) -> Result<u64, ConsoleError> {
        let (cond, mut values) = query.sql(false)?;
        values.push(SqlValue::Integer(i64::from(max_replays)));
        let sql = format!("SELECT count(*) FROM letters WHERE {cond} AND replayed >= ?");
        self.with(|db| {
            db.query_row(&sql, params_from_iter(values.iter()), |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    /// Calls `visit` with the export line (JSON, final copy count) of every
    /// letter `query` selects, in DLQ order, a batch at a time (memory stays
    /// at one batch); `visit` returns false to stop.
    pub fn export(
        &self,
        query: &Query,
        mut visit: impl FnMut(String) -> bool,
    ) -> Result<(), ConsoleError> {
        let (cond, values) = query.sql(false)?;
        let mut after = 0i64;
        loop {
            let mut v = values.clone();
            v.push(SqlValue::Integer(after));
            let sql = format!(
                "SELECT seq, json, copies FROM letters WHERE {cond} AND seq > ? ORDER BY seq LIMIT 1000"
            );
            let batch: Vec<(i64, String, i64)> = self.with(|db| {
                let mut st = db.prepare(&sql)?;
                st.query_map(params_from_iter(v.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })?;
            let Some(last) = batch.last().map(|b| b.0) else {
                return Ok(());
            };
            for (_, json, copies) in batch {
                let copies = u32::try_from(copies).unwrap_or(1);
                if !visit(crate::dlq::export::with_copies(&json, copies)) {
                    return Ok(());
                }
            }
            after = last;
        }
    }

    /// The overview's figures: live letters, the oldest, and the letters
    /// that failed since `since_ms`, by kind.
    pub fn stats(&self, since_ms: i64) -> Result<Stats, ConsoleError> {
        self.with(|db| {
            let (live, oldest) = db.query_row(
                "SELECT count(*), min(failed_at) FROM letters WHERE state IS NULL",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
            )?;
            let mut st = db.prepare(
                "SELECT coalesce(kind, '?'), count(*) FROM letters WHERE failed_at >= ? \
                 GROUP BY kind ORDER BY count(*) DESC",
            )?;
            let arrived = st
                .query_map([since_ms], |r| {
                    Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Stats {
                live: u64::try_from(live).unwrap_or(0),
                oldest,
                arrived,
            })
        })
    }

    /// The kind of the live letter `id`, if indexed.
    pub fn kind_of(&self, id: &str) -> Result<Option<String>, ConsoleError> {
        self.with(|db| {
            db.query_row(
                "SELECT coalesce(kind, '?') FROM letters WHERE id = ? ORDER BY seq DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Where the last read of `topic` ended, by partition.
    pub fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, ConsoleError> {
        self.with(|db| {
            let mut st = db.prepare("SELECT part, next FROM offsets WHERE topic = ?")?;
            st.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, ConsoleError> {
        self.with(|db| {
            db.query_row("SELECT v FROM meta WHERE k = ?", [key], |r| r.get(0))
                .optional()
        })
    }
}

/// Runs `f` on the connection in `db` (to the file `path`, named in errors).
pub(super) fn locked<T>(
    db: &Mutex<Connection>,
    path: &Path,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, ConsoleError> {
    let db = db.lock().map_err(|_| ConsoleError::State {
        path: path.display().to_string(),
        reason: "a request panicked while using it".into(),
    })?;
    f(&db).map_err(ConsoleError::state(path.display()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes to an index in one transaction until [`Writer::commit`]; what a
/// reader sees changes only at the commit (or a [`Writer::checkpoint`]), so
/// rows and the offsets they were read up to are recorded together.
#[derive(Debug)]
pub struct Writer {
    db: Connection,
    path: PathBuf,
    pending: usize,
}

impl Writer {
    /// A writer on the index file at `path` (created if missing).
    pub fn open(path: &Path) -> Result<Self, ConsoleError> {
        let db = open_db(path)?;
        db.execute_batch("BEGIN")
            .map_err(ConsoleError::state(path.display()))?;
        Ok(Writer {
            db,
            path: path.to_owned(),
            pending: 0,
        })
    }

    fn fail(&self) -> impl FnOnce(rusqlite::Error) -> ConsoleError {
        ConsoleError::state(self.path.display())
    }

    /// Adds a copy of `letter` under `key` (the last copy's body and place
    /// win; the copy count adds up).
    pub fn upsert(&mut self, letter: &Letter, key: &str) -> Result<(), ConsoleError> {
        let mut json = LetterJson::of(letter);
        json.copies = 1;
        json.state = None;
        let json = serde_json::to_string(&json).map_err(|e| ConsoleError::State {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        let m = &letter.message;
        let h = |name| m.header(name).map(str::to_owned);
        let error = h(backstop::wire::ERROR);
        let attempts: Option<i64> = m
            .header(backstop::wire::ATTEMPT)
            .and_then(|a| a.trim().parse().ok());
        self.db
            .prepare_cached(
                "INSERT INTO letters (key, id, source, rkey, kind, error, error_lc, attempts, \
                 replayed, first_failure, last_failure, failed_at, copies, part, off, state, json) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                 (SELECT state FROM states WHERE key = ?1), ?16) \
                 ON CONFLICT (key) DO UPDATE SET copies = copies + excluded.copies, \
                 part = excluded.part, off = excluded.off, json = excluded.json",
            )
            .and_then(|mut st| {
                st.execute(params![
                    key,
                    letter.id(),
                    letter.original_source(),
                    m.key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    h(backstop::wire::ERROR_KIND),
                    error,
                    error.as_ref().map(|e| e.to_lowercase()),
                    attempts,
                    i64::from(m.replayed()),
                    h(backstop::wire::FIRST_FAILURE),
                    h(backstop::wire::LAST_FAILURE),
                    letter.failed_at().map(millis),
                    i64::from(letter.copies),
                    m.meta.partition,
                    m.meta.offset,
                    json,
                ])
            })
            .map_err(self.fail())?;
        self.tick()
    }

    /// One more copy of the letter `key`.
    pub fn add_copy(&mut self, key: &str) -> Result<(), ConsoleError> {
        self.db
            .execute(
                "UPDATE letters SET copies = copies + 1 WHERE key = ?",
                [key],
            )
            .map_err(self.fail())?;
        self.tick()
    }

    /// Records the state of the letter `key` (none: live again).
    pub fn set_state(&mut self, key: &str, state: Option<&str>) -> Result<(), ConsoleError> {
        self.db
            .execute(
                "INSERT INTO states (key, state) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                params![key, state],
            )
            .and_then(|_| {
                self.db.execute(
                    "UPDATE letters SET state = ?2 WHERE key = ?1",
                    params![key, state],
                )
            })
            .map_err(self.fail())?;
        self.tick()
    }

    /// Marks the live letter `id` (every incarnation) as `state`.
    pub fn mark_id(&mut self, id: &str, state: &str) -> Result<(), ConsoleError> {
        self.db
            .execute(
                "UPDATE letters SET state = ?2 WHERE id = ?1 AND state IS NULL",
                params![id, state],
            )
            .map_err(self.fail())?;
        self.tick()
    }

    /// Records where the read of `topic` ended.
    pub fn set_offsets(
        &mut self,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), ConsoleError> {
        for (p, next) in offsets {
            self.db
                .execute(
                    "INSERT INTO offsets (topic, part, next) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (topic, part) DO UPDATE SET next = excluded.next",
                    params![topic, p, next],
                )
                .map_err(self.fail())?;
        }
        Ok(())
    }

    /// Sets a value of the `meta` table.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), ConsoleError> {
        self.db
            .execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                params![key, value],
            )
            .map_err(self.fail())
            .map(drop)
    }

    fn tick(&mut self) -> Result<(), ConsoleError> {
        self.pending += 1;
        Ok(())
    }

    /// Writes since the last commit.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Commits what was written so far and goes on in a new transaction.
    pub fn checkpoint(&mut self) -> Result<(), ConsoleError> {
        self.pending = 0;
        self.db.execute_batch("COMMIT; BEGIN").map_err(self.fail())
    }

    /// Commits and closes.
    pub fn commit(self) -> Result<(), ConsoleError> {
        self.db.execute_batch("COMMIT").map_err(self.fail())
    }
}
