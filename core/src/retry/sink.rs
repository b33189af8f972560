use std::time::Duration;

use crate::error::SinkError;
use crate::message::Message;
use crate::transaction::InTransaction;

/// Where long retry delays go: a broker-delayed republish.
///
/// The adapter publishes `copy` (built by [`copy::retry`](crate::copy::retry):
/// attempt incremented, due time stamped) so that it is consumed again no
/// sooner than `delay`, and returns only once the broker confirmed it. Only
/// then is the original acked.
///
/// A sink that sends the copy back to an in-memory queue after the delay
/// (what a RabbitMQ delay queue or a Kafka retry topic does for real):
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use backstop::error::SinkError;
/// use backstop::memory::MemoryBroker;
/// use backstop::retry::RetrySink;
/// use backstop::Message;
///
/// struct Later(MemoryBroker);
///
/// #[async_trait::async_trait]
/// impl RetrySink for Later {
///     async fn retry_later(&self, copy: Message, delay: Duration) -> Result<(), SinkError> {
///         self.0.publish_delayed("orders", copy, delay).map_err(|source| SinkError::Publish {
///             destination: "orders".into(),
///             source,
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), SinkError> {
/// let broker = MemoryBroker::new();
/// let sink: Arc<dyn RetrySink> = Arc::new(Later(broker.clone()));
/// sink.retry_later(Message::new("again"), Duration::from_secs(60)).await?;
/// let stats = broker.stats("orders");
/// assert_eq!((stats.ready, stats.delayed), (0, 1));
/// # Ok(())
/// # }
/// ```
///
/// Give it to [`StackBuilder::retry_sink`](crate::stack::StackBuilder::retry_sink).
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
