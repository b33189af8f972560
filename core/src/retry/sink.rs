use std::time::Duration;

use crate::transaction::InTransaction;
use crate::{Message, SinkError};

/// Where long retry delays go: a broker-delayed republish.
///
/// The adapter publishes `copy` (built by [`copy::retry`](crate::copy::retry):
/// attempt incremented, due time stamped) so that it is consumed again no
/// sooner than `delay`, and returns only once the broker confirmed it. Only
/// then is the original acked.
#[async_trait::async_trait]
pub trait RetrySink: Send + Sync + 'static {
    /// Republishes `copy` to come back after `delay`; resolves on the broker's confirm.
    async fn retry_later(&self, copy: Message, delay: Duration) -> Result<(), SinkError>;

    /// As [`retry_later`](Self::retry_later), for a delivery whose effects
    /// wait for its source's `transaction` (see
    /// [`transaction`](crate::transaction)): a sink that writes into it
    /// adds the copy there. The default writes at once.
    async fn retry_later_in(
        &self,
        copy: Message,
        delay: Duration,
        transaction: &InTransaction,
    ) -> Result<(), SinkError> {
        let _ = transaction;
        self.retry_later(copy, delay).await
    }
}
