//! The SQLite side of the spool: one connection on a thread of its own,
//! taking commands from the async handle.
//!
//! Writes are grouped: every push waiting when the thread picks up work is
//! written in one transaction, so concurrent publishers share one `fsync`.
//! A push is answered only after its transaction committed (WAL mode,
//! `synchronous=FULL`: the commit is on disk when `COMMIT` returns).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, SystemTime};

use backstop::Message;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::rows::{SCHEMA, SCHEMA_VERSION, UNREADABLE, decode, ms, refused, to_i64, to_u64};
use super::state::{Counts, State};
use crate::lock::SpoolLock;
use crate::record::{RefusedRecord, SpooledRecord, Unit};
use crate::{SpoolConfig, SpoolError, metrics};

/// Pushes written in one transaction at most.
const MAX_GROUP: usize = 1_024;

/// A write waiting for the thread.
pub(crate) struct Push {
    pub(crate) destination: Option<String>,
    pub(crate) message: Message,
    pub(crate) size: u64,
    pub(crate) reply: oneshot::Sender<Result<u64, SpoolError>>,
}

/// What the async handle asks of the thread.
pub(crate) enum Command {
    Push(Box<Push>),
    Read {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<SpooledRecord>, SpoolError>>,
    },
    Remove {
        seqs: Vec<u64>,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    SetAside {
        seq: u64,
        reason: String,
        error: String,
        reply: oneshot::Sender<Result<bool, SpoolError>>,
    },
    Refused {
        limit: usize,
        reply: oneshot::Sender<Result<Vec<RefusedRecord>, SpoolError>>,
    },
    Close,
}

/// The open database and the lock that makes it ours.
pub(crate) struct Db {
    conn: Connection,
    config: SpoolConfig,
    state: Arc<State>,
    _lock: SpoolLock,
}

impl Db {
    /// Locks and opens (or creates) the spool, and counts what it holds.
    pub(crate) fn open(config: SpoolConfig, state: Arc<State>) -> Result<Db, SpoolError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SpoolError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        // Lock first: never touch a database another process is writing.
        let lock = SpoolLock::acquire(&path)?;
        let storage = |source| SpoolError::Storage {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(storage)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(storage)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SpoolError::Incompatible {
                path,
                reason: format!("SQLite refused WAL mode (journal_mode is {mode:?})"),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(storage)?;
        if synchronous < 2 {
            return Err(SpoolError::Incompatible {
                path,
                reason: format!("SQLite refused synchronous=FULL (it is {synchronous})"),
            });
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(storage)?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::Incompatible {
                path,
                reason: format!(
                    "it was written by a newer backstop-spool (schema {version}, this one reads {SCHEMA_VERSION})"
                ),
            });
        }
        conn.execute_batch(SCHEMA).map_err(storage)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(storage)?;
        let db = Db {
            conn,
            config,
            state,
            _lock: lock,
        };
        let counts = db.count().map_err(storage)?;
        db.state.reset(counts);
        let high: i64 = db
            .conn
            .query_row("SELECT coalesce(max(seq), 0) FROM records", [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        db.state
            .high
            .store(to_u64(high), std::sync::atomic::Ordering::Release);
        db.gauge();
        Ok(db)
    }

    fn path(&self) -> &Path {
        &self.config.path
    }

    fn storage(&self, source: rusqlite::Error) -> SpoolError {
        SpoolError::Storage {
            path: self.config.path.clone(),
            source,
        }
    }

    /// Rebuilds the in-memory counts from the file.
    fn count(&self) -> rusqlite::Result<Counts> {
        let mut counts = Counts::default();
        let mut stmt = self.conn.prepare(
            "SELECT destination, source, msg_key, COUNT(*), COALESCE(SUM(size), 0)
             FROM records GROUP BY destination, source, msg_key",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (destination, source, key, n, bytes) = row?;
            let unit = Unit::new(destination, &source, key.map(Bytes::from));
            counts.add(unit, to_u64(n), to_u64(bytes));
        }
        Ok(counts)
    }

    fn gauge(&self) {
        let (records, bytes) = self.state.totals();
        metrics::depth(&self.config.name, records, bytes);
    }

    /// Serves commands until `Close` or until every handle is gone.
    pub(crate) fn serve(mut self, commands: &Receiver<Command>) {
        let mut pending: Option<Command> = None;
        loop {
            let command = match pending.take() {
                Some(c) => c,
                None => match commands.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            match command {
                Command::Push(first) => {
                    let mut group = vec![*first];
                    while group.len() < MAX_GROUP {
                        match commands.try_recv() {
                            Ok(Command::Push(p)) => group.push(*p),
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.push(group);
                }
                Command::Read {
                    after,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.read(after, limit));
                }
                Command::Remove { seqs, reply } => {
                    let _ = reply.send(self.remove(&seqs));
                }
                Command::SetAside {
                    seq,
                    reason,
                    error,
                    reply,
                } => {
                    let _ = reply.send(self.set_aside(seq, &reason, &error));
                }
                Command::Refused { limit, reply } => {
                    let _ = reply.send(refused(&self.conn, limit).map_err(|e| self.storage(e)));
                }
                Command::Close => break,
            }
        }
        if let Err(error) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(path = ?self.path(), %error, "checkpoint on close failed");
        }
    }

    /// Writes a group of pushes in one transaction; answers each after the commit.
    fn push(&mut self, group: Vec<Push>) {
        let (mut records, mut bytes) = self.state.totals();
        let (max_records, max_bytes) = (self.config.max_records, self.config.max_bytes);
        let mut fits = Vec::with_capacity(group.len());
        for push in group {
            let full = max_records.is_some_and(|max| records.saturating_add(1) > max)
                || max_bytes.is_some_and(|max| bytes.saturating_add(push.size) > max);
            if full {
                let _ = push.reply.send(Err(SpoolError::Full {
                    path: self.config.path.clone(),
                    records,
                    bytes,
                    max_records,
                    max_bytes,
                    waited: None,
                }));
            } else {
                records += 1;
                bytes = bytes.saturating_add(push.size);
                fits.push(push);
            }
        }
        if fits.is_empty() {
            return;
        }
        match self.insert(&fits) {
            Ok(seqs) => {
                if let Some(&last) = seqs.iter().max() {
                    self.state
                        .high
                        .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
                }
                let n = u64::try_from(fits.len()).unwrap_or(u64::MAX);
                self.state.added(
                    fits.iter()
                        .map(|p| (Unit::of(p.destination.as_deref(), &p.message), p.size)),
                );
                self.gauge();
                metrics::spooled(&self.config.name, n);
                self.state.arrived.notify_waiters();
                for (push, seq) in fits.into_iter().zip(seqs) {
                    let _ = push.reply.send(Ok(seq));
                }
            }
            Err(error) => {
                tracing::error!(path = ?self.path(), %error, "writing to the spool failed");
                for push in fits {
                    let _ = push.reply.send(Err(SpoolError::Storage {
                        path: self.config.path.clone(),
                        source: clone_error(&error),
                    }));
                }
            }
        }
    }

    fn insert(&mut self, pushes: &[Push]) -> rusqlite::Result<Vec<u64>> {
        let tx = self.conn.transaction()?;
        let mut seqs = Vec::with_capacity(pushes.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO records
                 (destination, source, message_id, msg_key, payload, headers, size, timestamp_ms, spooled_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let now = ms(SystemTime::now());
            for push in pushes {
                let m = &push.message;
                let headers = serde_json::to_string(&m.headers)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                stmt.execute(params![
                    push.destination,
                    m.meta.source,
                    m.meta.message_id,
                    m.key.as_deref(),
                    &m.payload[..],
                    headers,
                    to_i64(push.size),
                    m.meta.timestamp.map(ms),
                    now,
                ])?;
                seqs.push(to_u64(tx.last_insert_rowid()));
            }
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Up to `limit` records after `after`, in order. A row that cannot be
    /// decoded (its headers are not JSON, a column has the wrong type) is
    /// moved to the `refused` table as `unreadable` instead of failing the
    /// read, so one bad row never stalls the whole spool.
    fn read(&mut self, after: u64, limit: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        loop {
            let rows = self.read_rows(after, limit).map_err(|e| self.storage(e))?;
            let mut records = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            for (seq, row) in rows {
                match row {
                    Ok(record) => records.push(record),
                    Err(error) => unreadable.push((seq, error)),
                }
            }
            if unreadable.is_empty() {
                return Ok(records);
            }
            for (seq, error) in unreadable {
                tracing::error!(
                    path = ?self.path(), seq, %error,
                    "a spool record cannot be read; it is moved to the refused records"
                );
                self.set_aside(seq, UNREADABLE, &error.to_string())?;
                metrics::refused(&self.config.name, UNREADABLE);
            }
            // Read again: the batch is whole without the rows set aside.
        }
    }

    fn read_rows(
        &self,
        after: u64,
        limit: usize,
    ) -> rusqlite::Result<Vec<(u64, rusqlite::Result<SpooledRecord>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, destination, source, message_id, msg_key, payload, headers, timestamp_ms, spooled_ms
             FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![to_i64(after), limit], |r| {
            Ok((to_u64(r.get(0)?), decode(r)))
        })?;
        rows.collect()
    }

    /// Moves record `seq` to the `refused` table; false if it was not there.
    fn set_aside(&mut self, seq: u64, reason: &str, error: &str) -> Result<bool, SpoolError> {
        let moved = self
            .move_to_refused(seq, reason, error)
            .map_err(|e| self.storage(e))?;
        let Some(removed) = moved else {
            return Ok(false);
        };
        self.account_removed([removed]);
        Ok(true)
    }

    fn move_to_refused(
        &mut self,
        seq: u64,
        reason: &str,
        error: &str,
    ) -> rusqlite::Result<Option<(Unit, u64)>> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO refused
             (seq, destination, source, message_id, msg_key, payload, headers, size, timestamp_ms,
              spooled_ms, reason, error, refused_ms)
             SELECT seq, destination, source, message_id, msg_key, payload, headers, size,
                    timestamp_ms, spooled_ms, ?2, ?3, ?4
             FROM records WHERE seq = ?1",
            params![to_i64(seq), reason, error, ms(SystemTime::now())],
        )?;
        let row = delete_record(&tx, seq)?;
        tx.commit()?;
        Ok(row)
    }

    /// Removes records; returns how many were there.
    fn remove(&mut self, seqs: &[u64]) -> Result<u64, SpoolError> {
        let removed = self.delete(seqs).map_err(|e| self.storage(e))?;
        let n = u64::try_from(removed.len()).unwrap_or(u64::MAX);
        if n > 0 {
            self.account_removed(removed);
        }
        Ok(n)
    }

    /// Takes removed records off the counts, updates the gauge and wakes
    /// whoever waits for room.
    fn account_removed(&mut self, removed: impl IntoIterator<Item = (Unit, u64)>) {
        self.state.removed(removed);
        self.gauge();
        self.state.removed.notify_waiters();
    }

    fn delete(&mut self, seqs: &[u64]) -> rusqlite::Result<Vec<(Unit, u64)>> {
        let tx = self.conn.transaction()?;
        let mut removed = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            removed.extend(delete_record(&tx, seq)?);
        }
        tx.commit()?;
        Ok(removed)
    }
}

/// Deletes record `seq` in `tx`; what it held (its unit and size), if it
/// was there.
fn delete_record(
    tx: &rusqlite::Transaction<'_>,
    seq: u64,
) -> rusqlite::Result<Option<(Unit, u64)>> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM records WHERE seq = ?1 RETURNING destination, source, msg_key, size",
    )?;
    let row = stmt
        .query_row(params![to_i64(seq)], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(destination, source, key, size)| {
        (
            Unit::new(destination, &source, key.map(Bytes::from)),
            to_u64(size),
        )
    }))
}

/// rusqlite's error is not `Clone`; a group's failure is reported to each push.
fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(e, text) => rusqlite::Error::SqliteFailure(*e, text.clone()),
        other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
    }
}

/// Where a spool's database lives, for errors raised outside the thread.
pub(crate) fn closed(path: &Path) -> SpoolError {
    SpoolError::Closed {
        path: PathBuf::from(path),
    }
}
