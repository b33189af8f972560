//! [`Spool`]: the durable local queue of messages the broker did not take.
//!
//! One SQLite database in WAL mode with `synchronous=FULL`, written by a
//! thread of its own (SQLite is blocking; the async side never waits on a
//! lock or on the disk). A write returns only after its transaction
//! committed, so a message the spool accepted survives a crash of the
//! process (`kill -9`) and, with `synchronous=FULL`, a power cut. Records
//! come back in the order they were written, across restarts.
//!
//! The spool counts its records per ordering unit (destination and key),
//! rebuilt at open, so a publisher can send a message of a key that still
//! has records waiting behind them instead of overtaking them.

mod db;
mod rows;
mod state;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::Message;
use tokio::sync::oneshot;

use self::db::{Command, Db, Push, closed};
use self::rows::read_refused;
pub(crate) use self::state::State;
use crate::record::{RefusedRecord, SpooledRecord, Unit, size_of};
use crate::{SpoolConfig, SpoolError, WhenFull, metrics};

/// A handle to an open spool; cheap to clone (clones share it).
///
/// One SQLite database in WAL mode with `synchronous=FULL`, written by a
/// thread of its own; a write returns only after its transaction committed
/// (concurrent writes share one commit). Records come back in the order
/// they were written, across restarts. One process at a time: the lock
/// file beside the database ([`SpoolConfig::lock_path`]) is held with an OS
/// lock, released by the operating system however the process ends.
///
/// [`ReliablePublisher`](crate::ReliablePublisher) and
/// [`SpoolingDeadLetterSink`](crate::SpoolingDeadLetterSink) open theirs;
/// [`Spool::open`] alone is for looking into a spool (how many records, which
/// ones) without relaying it.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    config: SpoolConfig,
    commands: std::sync::mpsc::Sender<Command>,
    state: Arc<State>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (records, bytes) = self.inner.state.totals();
        f.debug_struct("Spool")
            .field("path", &self.inner.config.path)
            .field("records", &records)
            .field("bytes", &bytes)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool of `config`: takes its lock file, sets
    /// WAL mode and `synchronous=FULL`, and counts the records it holds.
    ///
    /// Fails with [`SpoolError::Locked`] if another process, or another
    /// handle in this one, has it open.
    pub async fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        metrics::describe();
        let state = Arc::new(State::default());
        let (commands, receiver) = std::sync::mpsc::channel();
        let (opened, open_result) = oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("spool-{}", config.name))
            .spawn(move || match Db::open(thread_config, thread_state) {
                Ok(db) => {
                    let _ = opened.send(Ok(()));
                    db.serve(&receiver);
                }
                Err(error) => {
                    let _ = opened.send(Err(error));
                }
            })
            .map_err(|source| SpoolError::Io {
                path: config.path.clone(),
                source,
            })?;
        let result = open_result
            .await
            .unwrap_or_else(|_| Err(closed(&config.path)));
        if let Err(error) = result {
            // The thread has ended (it answered after its last use of anything).
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            return Err(error);
        }
        let (records, _) = state.totals();
        tracing::info!(path = ?config.path, records, "spool opened");
        Ok(Spool {
            inner: Arc::new(Inner {
                config,
                commands,
                state,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The spool's configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.inner.config
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.config.path
    }

    /// Records waiting.
    pub fn len(&self) -> u64 {
        self.inner.state.totals().0
    }

    /// True when no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting (destination, payload, headers, key).
    pub fn bytes(&self) -> u64 {
        self.inner.state.totals().1
    }

    /// The oldest `limit` records, in spool order.
    pub async fn peek(&self, limit: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        self.read_after(0, limit).await
    }

    /// Removes records for good, whether or not the broker has them; returns
    /// how many were there.
    ///
    /// The relay removes a record itself once the broker confirmed it, and
    /// moves one the broker refuses for good to the [refused records](Spool::refused).
    /// This is for an operator dropping a record whose destination is gone
    /// for good, which otherwise blocks its key.
    pub async fn remove(&self, seqs: &[u64]) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Remove {
            seqs: seqs.to_vec(),
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// The oldest `limit` refused records: messages the broker refused for
    /// good (or rows that could not be read), which the relay moved out of
    /// their key's way. See [`RefusedRecord`].
    pub async fn refused(&self, limit: usize) -> Result<Vec<RefusedRecord>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Refused { limit, reply })?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// The oldest `limit` refused records of the spool file at `path`, read
    /// without opening the spool (no lock is taken: the process that owns
    /// it may be running). For tools such as `backstop spool refused`.
    pub async fn read_refused(
        path: impl AsRef<Path>,
        limit: usize,
    ) -> Result<Vec<RefusedRecord>, SpoolError> {
        let path = path.as_ref().to_owned();
        let at = path.clone();
        tokio::task::spawn_blocking(move || read_refused(&path, limit))
            .await
            .map_err(|e| SpoolError::Io {
                path: at,
                source: std::io::Error::other(e),
            })?
    }

    /// Moves record `seq` to the refused records with `reason` and `error`;
    /// false if it was not in the spool.
    pub(crate) async fn set_aside(
        &self,
        seq: u64,
        reason: &str,
        error: &str,
    ) -> Result<bool, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::SetAside {
            seq,
            reason: reason.to_owned(),
            error: error.to_owned(),
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Closes the spool and waits until its file and lock are released
    /// (other clones fail with [`SpoolError::Closed`] from then on). The
    /// records stay in the file for the next open.
    pub async fn close(self) -> Result<(), SpoolError> {
        let _ = self.inner.commands.send(Command::Close);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| SpoolError::Io {
                    path: self.inner.config.path.clone(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|_| SpoolError::Io {
                    path: self.inner.config.path.clone(),
                    source: std::io::Error::other("the spool thread panicked"),
                })?;
        }
        Ok(())
    }

    fn closed(&self) -> SpoolError {
        closed(&self.inner.config.path)
    }

    fn send(&self, command: Command) -> Result<(), SpoolError> {
        self.inner.commands.send(command).map_err(|_| self.closed())
    }

    pub(crate) fn state(&self) -> &State {
        &self.inner.state
    }

    /// Records of `unit` waiting.
    pub(crate) fn pending(&self, unit: &Unit) -> u64 {
        self.inner.state.pending(unit)
    }

    /// Writes `message` for `destination`; resolves once it is committed.
    /// Applies the [`WhenFull`] policy; returns the record's `seq`.
    pub(crate) async fn push(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<u64, SpoolError> {
        let size = size_of(destination, message);
        let config = &self.inner.config;
        if let Some(max_bytes) = config.max_bytes
            && size > max_bytes
        {
            return Err(SpoolError::RecordTooLarge {
                path: config.path.clone(),
                size,
                max_bytes,
            });
        }
        let timeout = match config.when_full {
            WhenFull::Fail => return self.try_push(destination, message, size).await,
            WhenFull::Block { timeout } => timeout,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let room = self.inner.state.removed.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(destination, message, size).await {
                Err(SpoolError::Full {
                    path,
                    records,
                    bytes,
                    max_records,
                    max_bytes,
                    ..
                }) => {
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        return Err(SpoolError::Full {
                            path,
                            records,
                            bytes,
                            max_records,
                            max_bytes,
                            waited: Some(timeout),
                        });
                    }
                }
                other => return other,
            }
        }
    }

    async fn try_push(
        &self,
        destination: Option<&str>,
        message: &Message,
        size: u64,
    ) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Push(Box::new(Push {
            destination: destination.map(str::to_owned),
            message: message.clone(),
            size,
            reply,
        })))?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Up to `limit` records with a `seq` above `after`, in order.
    pub(crate) async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SpooledRecord>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Read {
            after,
            limit,
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Waits until the spool is empty, at most `timeout`.
    pub(crate) async fn drained(&self, timeout: Duration) -> Result<(), SpoolError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let removed = self.inner.state.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            let records = self.len();
            if records == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                return Err(SpoolError::NotDrained {
                    path: self.inner.config.path.clone(),
                    records: self.len(),
                    waited: timeout,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
