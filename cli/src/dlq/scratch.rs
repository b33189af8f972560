//! What one DLQ command must remember per letter, kept on disk so its memory
//! does not grow with the DLQ.
//!
//! A walk has to recognise copies of a letter it saw earlier (same message
//! id), remember what it did with each selected letter, and, for `list`,
//! print every row with its final copy count. On a DLQ of 100,000 letters
//! that is megabytes of ids; in a [`Scratch`] it is a temporary SQLite
//! database (deleted when the command ends) whose page cache is capped at
//! [`CACHE_KIB`], so the memory a command uses is bounded whatever the DLQ
//! holds. The disk it uses is about 100 bytes per letter (plus the rows of
//! `list`).

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::CliError;

/// The page cache of a scratch database, in KiB: its memory bound.
pub const CACHE_KIB: u32 = 1024;

/// What a command did with a selected letter, for its later copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Replayed or purged: later copies are removed too.
    Removed,
    /// Refused or only listed: later copies stay.
    Kept,
}

/// Where the last copy of a letter is in a Kafka DLQ, and how many it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Copies of the letter (same key).
    pub copies: u32,
    /// The last copy's partition.
    pub partition: Option<i32>,
    /// The last copy's offset.
    pub offset: Option<i64>,
}

/// A per-command index of letters on disk (see the module docs).
#[derive(Debug)]
pub struct Scratch {
    db: Connection,
}

fn failed(e: rusqlite::Error) -> CliError {
    CliError::Scratch(e.to_string())
}

impl Scratch {
    /// A fresh, empty index in the temporary directory.
    pub fn new() -> Result<Self, CliError> {
        // An empty path: a private on-disk database SQLite deletes on close.
        // One transaction for its whole life (nothing needs to survive), so
        // a write costs no commit; dirty pages spill to the file early, so
        // the cache stays at its size.
        let db = Connection::open("").map_err(failed)?;
        db.execute_batch(&format!(
            "PRAGMA cache_size = -{CACHE_KIB};
             PRAGMA temp_store = FILE;
             PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             CREATE TABLE letters (
                 id TEXT PRIMARY KEY NOT NULL,
                 seq INTEGER NOT NULL,
                 copies INTEGER NOT NULL,
                 mark INTEGER,
                 part INTEGER,
                 off INTEGER,
                 row TEXT
             );
             CREATE INDEX letters_seq ON letters (seq);
             CREATE TABLE states (key TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL);
             PRAGMA cache_spill = 64;
             BEGIN;"
        ))
        .map_err(failed)?;
        Ok(Scratch { db })
    }

    /// Counts one sighting of `id`; returns how many copies were seen so far
    /// (1: this is the first).
    pub fn sight(&mut self, id: &str) -> Result<u32, CliError> {
        self.sight_many(id, 1)
    }

    /// Counts `n` sightings of `id` at once; returns the copies seen so far.
    pub fn sight_many(&mut self, id: &str, n: u32) -> Result<u32, CliError> {
        self.db
            .prepare_cached(
                "INSERT INTO letters (id, seq, copies)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM letters), ?2)
                 ON CONFLICT (id) DO UPDATE SET copies = copies + ?2
                 RETURNING copies",
            )
            .map_err(failed)?
            .query_row(params![id, n], |r| r.get(0))
            .map_err(failed)
    }

    /// How many copies of `id` were counted (0: never seen).
    pub fn copies(&self, id: &str) -> Result<u32, CliError> {
        Ok(self
            .db
            .prepare_cached("SELECT copies FROM letters WHERE id = ?1")
            .map_err(failed)?
            .query_row(params![id], |r| r.get(0))
            .optional()
            .map_err(failed)?
            .unwrap_or(0))
    }

    /// Records what was done with `id` (seen before).
    pub fn set_mark(&mut self, id: &str, mark: Mark) -> Result<(), CliError> {
        let m = match mark {
            Mark::Removed => 1,
            Mark::Kept => 2,
        };
        self.db
            .prepare_cached("UPDATE letters SET mark = ?2 WHERE id = ?1")
            .map_err(failed)?
            .execute(params![id, m])
            .map(drop)
            .map_err(failed)
    }

    /// What was done with `id`, if anything.
    pub fn mark(&self, id: &str) -> Result<Option<Mark>, CliError> {
        let m: Option<Option<i64>> = self
            .db
            .prepare_cached("SELECT mark FROM letters WHERE id = ?1")
            .map_err(failed)?
            .query_row(params![id], |r| r.get(0))
            .optional()
            .map_err(failed)?;
        Ok(match m.flatten() {
            Some(1) => Some(Mark::Removed),
            Some(2) => Some(Mark::Kept),
            _ => None,
        })
    }

    /// Counts a copy of `key` found at `partition`/`offset` (the last one
    /// found wins).
    pub fn place(
        &mut self,
        key: &str,
        partition: Option<i32>,
        offset: Option<i64>,
    ) -> Result<(), CliError> {
        self.db
            .prepare_cached(
                "INSERT INTO letters (id, seq, copies, part, off)
                 VALUES (?1, 0, 1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET copies = copies + 1, part = ?2, off = ?3",
            )
            .map_err(failed)?
            .execute(params![key, partition, offset])
            .map(drop)
            .map_err(failed)
    }

    /// Where the last copy of `key` is, if it was placed.
    pub fn position(&self, key: &str) -> Result<Option<Position>, CliError> {
        self.db
            .prepare_cached("SELECT copies, part, off FROM letters WHERE id = ?1")
            .map_err(failed)?
            .query_row(params![key], |r| {
                Ok(Position {
                    copies: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                })
            })
            .optional()
            .map_err(failed)
    }

    /// True when no letter was counted or placed.
    pub fn is_empty(&self) -> Result<bool, CliError> {
        Ok(self.len()? == 0)
    }

    /// How many distinct letters were counted or placed.
    pub fn len(&self) -> Result<u64, CliError> {
        let n: i64 = self
            .db
            .prepare_cached("SELECT COUNT(*) FROM letters")
            .map_err(failed)?
            .query_row([], |r| r.get(0))
            .map_err(failed)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Records the state of `key` (`None`: forget it).
    pub fn set_state(&mut self, key: &str, state: Option<&str>) -> Result<(), CliError> {
        match state {
            Some(s) => self
                .db
                .prepare_cached(
                    "INSERT INTO states (key, state) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET state = ?2",
                )
                .map_err(failed)?
                .execute(params![key, s]),
            None => self
                .db
                .prepare_cached("DELETE FROM states WHERE key = ?1")
                .map_err(failed)?
                .execute(params![key]),
        }
        .map(drop)
        .map_err(failed)
    }

    /// The recorded state of `key`.
    pub fn state(&self, key: &str) -> Result<Option<String>, CliError> {
        self.db
            .prepare_cached("SELECT state FROM states WHERE key = ?1")
            .map_err(failed)?
            .query_row(params![key], |r| r.get(0))
            .optional()
            .map_err(failed)
    }

    /// Stores the printed row of `id` (seen before).
    pub fn set_row(&mut self, id: &str, row: &str) -> Result<(), CliError> {
        self.db
            .prepare_cached("UPDATE letters SET row = ?2 WHERE id = ?1")
            .map_err(failed)?
            .execute(params![id, row])
            .map(drop)
            .map_err(failed)
    }

    /// Calls `visit` with every stored row and its letter's copy count, in
    /// the order the letters were first seen.
    pub fn rows(
        &self,
        mut visit: impl FnMut(&str, u32) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT row, copies FROM letters WHERE row IS NOT NULL ORDER BY seq")
            .map_err(failed)?;
        let mut rows = stmt.query([]).map_err(failed)?;
        while let Some(r) = rows.next().map_err(failed)? {
            let row: String = r.get(0).map_err(failed)?;
            visit(&row, r.get(1).map_err(failed)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_marks_positions_and_rows_are_remembered() {
        let mut s = Scratch::new().unwrap();
        assert_eq!(s.sight("a").unwrap(), 1);
        assert_eq!(s.sight("b").unwrap(), 1);
        assert_eq!(s.sight("a").unwrap(), 2);
        assert_eq!(s.copies("a").unwrap(), 2);
        assert_eq!(s.copies("zz").unwrap(), 0);
        assert_eq!(s.mark("a").unwrap(), None);
        s.set_mark("a", Mark::Removed).unwrap();
        s.set_mark("b", Mark::Kept).unwrap();
        assert_eq!(s.mark("a").unwrap(), Some(Mark::Removed));
        assert_eq!(s.mark("b").unwrap(), Some(Mark::Kept));
        s.set_row("b", "row b").unwrap();
        s.set_row("a", "row a").unwrap();
        let mut rows = Vec::new();
        s.rows(|r, n| {
            rows.push((r.to_owned(), n));
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, [("row a".to_owned(), 2), ("row b".to_owned(), 1)]);
        assert_eq!(s.len().unwrap(), 2);

        s.place("k@0", Some(1), Some(5)).unwrap();
        s.place("k@0", Some(0), Some(9)).unwrap();
        assert_eq!(
            s.position("k@0").unwrap(),
            Some(Position {
                copies: 2,
                partition: Some(0),
                offset: Some(9)
            })
        );
        s.set_state("k@0", Some("purged")).unwrap();
        assert_eq!(s.state("k@0").unwrap().as_deref(), Some("purged"));
        s.set_state("k@0", None).unwrap();
        assert_eq!(s.state("k@0").unwrap(), None);
    }
}
