use std::future::Future;

use crate::{BoxError, Delivery};

/// Why a source could not yield a delivery.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection dropped; the source reconnects by itself and the runner goes on.
    #[error("connection to the broker lost, reconnecting: {0}")]
    Disconnected(#[source] BoxError),
    /// The broker cancelled the consumer (for example, the queue was deleted).
    #[error("consumer cancelled by the broker: {0}")]
    Cancelled(String),
    /// A failure the source cannot recover from.
    #[error("source failed: {0}")]
    Fatal(#[source] BoxError),
}

impl SourceError {
    /// True when the runner must stop.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SourceError::Disconnected(_))
    }
}

/// A stream of deliveries from a broker.
///
/// `next` must be cancel-safe: if its future is dropped before it resolves,
/// no delivery may be lost (it stays with the broker).
pub trait Source: Send + 'static {
    /// The next delivery; `None` when the source has ended.
    fn next(&mut self) -> impl Future<Output = Option<Result<Delivery, SourceError>>> + Send;

    /// Stops consuming; unsettled deliveries go back to the broker. Called once by the runner.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
