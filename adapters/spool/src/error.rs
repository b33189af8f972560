//! The errors: [`SpoolError`] (the local file), [`ReliableError`] (a publish
//! that was neither confirmed nor spooled) and [`OpenError`].

use std::path::PathBuf;
use std::time::Duration;

use backstop::publish::PublishError;

/// A failure of the spool itself.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process (or another handle in this one) has the spool open.
    #[error(
        "spool {path:?} is already open elsewhere (lock file {lock:?} is held{}); \
         a spool belongs to one process at a time: stop the other one or give this one its own path",
        holder.as_ref().map(|pid| format!(" by pid {pid}")).unwrap_or_default()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The process id written in the lock file by its holder, if readable.
        holder: Option<String>,
    },
    /// The spool's directory or lock file could not be created or locked.
    #[error("cannot use spool file {path:?}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed (disk full, permissions, a corrupt file).
    #[error("spool database {path:?} failed: {source}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a spool this version can read.
    #[error("{path:?} is not a usable spool: {reason}")]
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The spool is at its bound and the write was refused ([`WhenFull::Fail`](crate::WhenFull::Fail))
    /// or waited in vain ([`WhenFull::Block`](crate::WhenFull::Block)).
    #[error(
        "spool {path:?} is full ({records} records, {bytes} bytes; limits {max_records:?} records, \
         {max_bytes:?} bytes){}: the broker has not taken messages fast enough; \
         raise the limits or slow the producer down",
        waited.map(|w| format!(" and no room was made within {w:?}")).unwrap_or_default()
    )]
    Full {
        /// The database file.
        path: PathBuf,
        /// Records in the spool.
        records: u64,
        /// Bytes in the spool.
        bytes: u64,
        /// The record bound.
        max_records: Option<u64>,
        /// The byte bound.
        max_bytes: Option<u64>,
        /// How long the write waited for room (`Block` only).
        waited: Option<Duration>,
    },
    /// One record is larger than the whole spool may be.
    #[error("a record of {size} bytes can never fit in spool {path:?} (max_bytes {max_bytes})")]
    RecordTooLarge {
        /// The database file.
        path: PathBuf,
        /// The record's size.
        size: u64,
        /// The byte bound.
        max_bytes: u64,
    },
    /// The spool was closed (or its worker thread stopped).
    #[error("spool {path:?} is closed")]
    Closed {
        /// The database file.
        path: PathBuf,
    },
    /// [`flush`](crate::ReliablePublisher::flush) ran out of time.
    #[error(
        "{records} records still in spool {path:?} after {waited:?}: the broker has not taken them yet"
    )]
    NotDrained {
        /// The database file.
        path: PathBuf,
        /// Records still waiting.
        records: u64,
        /// How long the flush waited.
        waited: Duration,
    },
}

/// A publish that was neither confirmed by the broker nor written to the spool.
///
/// Only these reach the caller: a transient broker failure ends in the spool
/// as [`Sent::Spooled`](crate::Sent::Spooled).
#[derive(Debug, thiserror::Error)]
pub enum ReliableError {
    /// The broker refused the message for a reason retrying cannot fix
    /// (unroutable, missing destination, too large, invalid). It was not spooled.
    #[error("message {message_id} to {destination:?} was refused and not spooled: {source}")]
    Rejected {
        /// The message id.
        message_id: String,
        /// The destination.
        destination: String,
        /// The broker's answer.
        #[source]
        source: PublishError,
    },
    /// The broker did not confirm the message and the spool could not take it.
    #[error(
        "message {message_id} to {destination:?} was not confirmed and could not be spooled: {source}"
    )]
    NotSpooled {
        /// The message id.
        message_id: String,
        /// The destination.
        destination: String,
        /// Why the spool refused it.
        #[source]
        source: SpoolError,
    },
}

impl ReliableError {
    /// The message id of the failed publish.
    pub fn message_id(&self) -> &str {
        match self {
            ReliableError::Rejected { message_id, .. }
            | ReliableError::NotSpooled { message_id, .. } => message_id,
        }
    }
}

/// A reliable publisher or sink that could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The broker client's own timeout outlasts one attempt of the budget.
    #[error(
        "the broker client's own delivery timeout ({client:?}) is longer than the attempt timeout \
         ({attempt:?}): the client would keep retrying a message after it was spooled; set the \
         client's timeout (Kafka: KafkaConfig::message_timeout, message.timeout.ms) to at most {attempt:?}, \
         or raise Budget::attempt_timeout"
    )]
    ClientTimeout {
        /// The client's timeout.
        client: Duration,
        /// The budget's attempt timeout.
        attempt: Duration,
    },
}
