//! [`Store`]: the console's own records in `console.sqlite` under the state
//! directory: the jobs (redrives and purges, with their filter, options and
//! progress, so a job the console was running when it stopped is resumed
//! at its next start), the audit log, and one row per redriven letter (the
//! overview's "redriven in the last hour").

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::error::ConsoleError;
use super::query::{Query, millis};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    user TEXT NOT NULL,
    status TEXT NOT NULL,
    walked INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    started INTEGER NOT NULL,
    finished INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    dlq TEXT NOT NULL,
    filter TEXT NOT NULL,
    count INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS redriven (at INTEGER NOT NULL, dlq TEXT NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS redriven_at ON redriven (dlq, at);
";

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Redrive the selected letters.
    Redrive,
    /// Purge the selected letters.
    Purge,
}

/// A job as requested: which DLQ, which letters, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Redrive or purge.
    pub action: Action,
    /// The DLQ's broker name.
    pub cluster: String,
    /// The DLQ.
    pub dlq: String,
    /// Which letters.
    pub query: Query,
    /// The destination instead of the source (redrive).
    pub to: Option<String>,
    /// At most this many letters per second (redrive).
    pub rate: Option<f64>,
    /// The loop guard (redrive).
    pub max_replays: u32,
    /// For "every letter matching the filter": the message ids of the
    /// letters the index held when the job was started; the job acts on
    /// those only (letters that arrive later are left). `None`: the query
    /// alone (the ids it names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
}

/// A job's record.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its number.
    pub id: i64,
    /// What it does.
    pub spec: JobSpec,
    /// Who started it.
    pub user: String,
    /// `running`, `done`, `failed`, `cancelled`, or `interrupted` (stopped
    /// with the console and not resumed by a read-only one).
    pub status: String,
    /// Letters read by the current run.
    pub walked: u64,
    /// Letters the current run reads.
    pub total: u64,
    /// Letters redriven or purged, over every run.
    pub done: u64,
    /// Letters the loop guard refused in the last run.
    pub refused: u64,
    /// How many times it was started (more than 1: resumed).
    pub runs: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (Unix ms).
    pub started: i64,
    /// When it ended (Unix ms).
    pub finished: Option<i64>,
}

/// One entry of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub at: i64,
    /// Who: the authenticated user, or `local`.
    pub user: String,
    /// What (`redrive`, `redrive dry run`, `purge`, …).
    pub action: String,
    /// `<cluster>/<dlq>`.
    pub dlq: String,
    /// The filter, as a query string.
    pub filter: String,
    /// How many letters.
    pub count: Option<u64>,
    /// More (job number, destination, outcome).
    pub detail: String,
}

/// The console's records (see the module docs).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: Mutex<Connection>,
}

fn now() -> i64 {
    millis(std::time::SystemTime::now())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, ConsoleError> {
        let db = Connection::open(path).map_err(ConsoleError::state(path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| db.execute_batch(&format!("PRAGMA journal_mode = WAL; {SCHEMA}")))
            .map_err(ConsoleError::state(path.display()))?;
        Ok(Store {
            path: path.to_owned(),
            db: Mutex::new(db),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ConsoleError> {
        super::index::locked(&self.db, &self.path, f)
    }

    /// Records a new running job; returns its number.
    pub fn create_job(&self, spec: &JobSpec, user: &str) -> Result<i64, ConsoleError> {
        let spec = serde_json::to_string(spec).map_err(|e| ConsoleError::State {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.with(|db| {
            db.execute(
                "INSERT INTO jobs (spec, user, status, started) VALUES (?, ?, 'running', ?)",
                params![spec, user, now()],
            )?;
            Ok(db.last_insert_rowid())
        })
    }

    /// Records a job's progress.
    pub fn progress(
        &self,
        id: i64,
        walked: u64,
        total: u64,
        done: u64,
        refused: u64,
    ) -> Result<(), ConsoleError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET walked = ?2, total = ?3, done = ?4, refused = ?5 WHERE id = ?1",
                params![id, n(walked), n(total), n(done), n(refused)],
            )
            .map(drop)
        })
    }

    /// Records another start of a job (a resume after a restart).
    pub fn restarted(&self, id: i64) -> Result<(), ConsoleError> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET runs = runs + 1, walked = 0, status = 'running' WHERE id = ?",
                [id],
            )
            .map(drop)
        })
    }

    /// Marks a job interrupted: it stopped with the console, and a
    /// read-only console does not resume it (the next one that may act does).
    pub fn interrupted(&self, id: i64) -> Result<(), ConsoleError> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET status = 'interrupted' WHERE id = ? AND status = 'running'",
                [id],
            )
            .map(drop)
        })
    }

    /// Records the end of a job: `error` none for success, `cancelled` when
    /// it was stopped on request.
    pub fn finish(
        &self,
        id: i64,
        error: Option<&str>,
        cancelled: bool,
    ) -> Result<(), ConsoleError> {
        let status = match (error, cancelled) {
            (Some(_), _) => "failed",
            (None, true) => "cancelled",
            (None, false) => "done",
        };
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET status = ?2, error = ?3, finished = ?4 WHERE id = ?1",
                params![id, status, error, now()],
            )
            .map(drop)
        })
    }

    fn read_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        let spec: String = r.get(1)?;
        let spec = serde_json::from_str(&spec).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(Job {
            id: r.get(0)?,
            spec,
            user: r.get(2)?,
            status: r.get(3)?,
            walked: count(r.get(4)?),
            total: count(r.get(5)?),
            done: count(r.get(6)?),
            refused: count(r.get(7)?),
            runs: count(r.get(8)?),
            error: r.get(9)?,
            started: r.get(10)?,
            finished: r.get(11)?,
        })
    }

    const JOB: &'static str = "SELECT id, spec, user, status, walked, total, done, refused, runs, \
                               error, started, finished FROM jobs";

    /// One job.
    pub fn job(&self, id: i64) -> Result<Option<Job>, ConsoleError> {
        self.with(|db| {
            db.query_row(&format!("{} WHERE id = ?", Self::JOB), [id], Self::read_job)
                .optional()
        })
    }

    /// The last `limit` jobs, newest first; with `running` only those not
    /// ended (running or interrupted).
    pub fn jobs(&self, running: bool, limit: u32) -> Result<Vec<Job>, ConsoleError> {
        let cond = if running {
            "WHERE status IN ('running', 'interrupted')"
        } else {
            ""
        };
        self.with(|db| {
            let mut st = db.prepare(&format!(
                "{} {cond} ORDER BY id DESC LIMIT {limit}",
                Self::JOB
            ))?;
            st.query_map([], Self::read_job)?.collect()
        })
    }

    /// Adds an entry to the audit log.
    pub fn audit(
        &self,
        user: &str,
        action: &str,
        dlq: &str,
        query: &Query,
        count: Option<u64>,
        detail: &str,
    ) -> Result<(), ConsoleError> {
        let filter = query.to_query_string();
        let count = count.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        self.with(|db| {
            db.execute(
                "INSERT INTO audit (at, user, action, dlq, filter, count, detail) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![now(), user, action, dlq, filter, count, detail],
            )
            .map(drop)
        })
    }

    /// The last `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, ConsoleError> {
        self.with(|db| {
            let mut st = db.prepare(&format!(
                "SELECT at, user, action, dlq, filter, count, detail FROM audit \
                 ORDER BY seq DESC LIMIT {limit}"
            ))?;
            st.query_map([], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    user: r.get(1)?,
                    action: r.get(2)?,
                    dlq: r.get(3)?,
                    filter: r.get(4)?,
                    count: r.get::<_, Option<i64>>(5)?.map(count),
                    detail: r.get(6)?,
                })
            })?
            .collect()
        })
    }

    /// Records letters redriven from `dlq`, by kind; forgets those older
    /// than a day.
    pub fn redriven(&self, dlq: &str, kinds: &[String]) -> Result<(), ConsoleError> {
        let at = now();
        self.with(|db| {
            let tx = db.unchecked_transaction()?;
            for kind in kinds {
                tx.execute(
                    "INSERT INTO redriven (at, dlq, kind) VALUES (?, ?, ?)",
                    params![at, dlq, kind],
                )?;
            }
            tx.execute("DELETE FROM redriven WHERE at < ?", [at - 24 * 3600 * 1000])?;
            tx.commit()
        })
    }

    /// Letters redriven from `dlq` since `since_ms`, by kind.
    pub fn redriven_since(
        &self,
        dlq: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, u64)>, ConsoleError> {
        self.with(|db| {
            let mut st = db.prepare(
                "SELECT kind, count(*) FROM redriven WHERE dlq = ? AND at >= ? \
                 GROUP BY kind ORDER BY count(*) DESC",
            )?;
            st.query_map(params![dlq, since_ms], |r| {
                Ok((r.get(0)?, count(r.get(1)?)))
            })?
            .collect()
        })
    }
}
