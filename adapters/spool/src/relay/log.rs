//! [`RecordLog`]: what a relay drains, and the local spool as one.

use tokio::sync::Notify;

use crate::record::SpooledRecord;
use crate::{Spool, SpoolError};

/// A durable log of messages waiting for the broker, in order: what a
/// [`Relay`](super::Relay) drains. Implemented by the local [`Spool`] and by other
/// stores of outgoing messages (a PostgreSQL outbox table).
///
/// Records carry increasing `seq` numbers. The relay reads them in `seq`
/// order a batch at a time, removes those the broker confirmed, and sets
/// aside those the broker refuses for good.
#[async_trait::async_trait]
pub trait RecordLog: Send + Sync + 'static {
    /// The log's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The log's name in logs and metrics (the `spool` label).
    fn name(&self) -> &str;

    /// Notified when records were added, so an idle relay looks at once.
    fn arrived(&self) -> &Notify;

    /// Up to `limit` records with `seq > after`, oldest first, leaving out
    /// those set aside.
    async fn read_after(&self, after: u64, limit: usize)
    -> Result<Vec<SpooledRecord>, Self::Error>;

    /// True when `error` means the log is closed for good (or no longer
    /// this relay's to drain): the relay stops.
    fn is_closed(error: &Self::Error) -> bool;

    /// Removes the records `seqs` (confirmed by the broker); how many were removed.
    async fn remove(&self, seqs: &[u64]) -> Result<u64, Self::Error>;

    /// Moves record `seq` out of its key's way, keeping it for an operator:
    /// the broker refuses it for good (`reason` is the failure's label).
    async fn set_aside(&self, seq: u64, reason: &str, error: &str) -> Result<(), Self::Error>;

    /// The highest `seq` in the log now, if the log can tell (default:
    /// unknown). A pass of the relay covers at least the records up to
    /// it, then ends even while new records keep coming, so waiting keys
    /// are retried and late records found in bounded time under load.
    async fn high_water(&self) -> Option<u64> {
        None
    }

    /// True while this relay may still send the log's records: checked
    /// before each send, so a relay that lost its claim on the log (a
    /// leader's lock) stops at once rather than at its next read. Default
    /// true.
    async fn still_owned(&self) -> bool {
        true
    }
}

/// The local spool as a log. One relay per spool: a [`ReliablePublisher`](crate::ReliablePublisher)
/// or [`SpoolingDeadLetterSink`](crate::SpoolingDeadLetterSink) already
/// runs one on the spool it opened; a second [`Relay::start`](super::Relay::start) on it would
/// send records twice and out of order.
#[async_trait::async_trait]
impl RecordLog for Spool {
    type Error = SpoolError;

    fn name(&self) -> &str {
        &self.config().name
    }

    fn arrived(&self) -> &Notify {
        &self.state().arrived
    }

    async fn high_water(&self) -> Option<u64> {
        Some(self.state().high.load(std::sync::atomic::Ordering::Acquire))
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        Spool::read_after(self, after, limit).await
    }

    fn is_closed(error: &SpoolError) -> bool {
        matches!(error, SpoolError::Closed { .. })
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, SpoolError> {
        Spool::remove(self, seqs).await
    }

    async fn set_aside(&self, seq: u64, reason: &str, error: &str) -> Result<(), SpoolError> {
        Spool::set_aside(self, seq, reason, error).await.map(drop)
    }
}
