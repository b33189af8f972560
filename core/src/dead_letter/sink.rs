use crate::transaction::InTransaction;
use crate::{Message, SinkError};

/// Where dead letters go.
///
/// `dead_letter` must resolve only once the broker confirmed the write: only
/// then does the stack ack the source. `letter` already carries the wire
/// headers ([`copy::dead_letter`](crate::copy::dead_letter)). `destination`
/// overrides the adapter's default DLQ name (`<queue>.dlq`,
/// `<topic>.<group>.dlq`).
#[async_trait::async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Writes `letter` to the DLQ; resolves on the broker's confirm.
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError>;

    /// As [`dead_letter`](Self::dead_letter), for a delivery whose effects
    /// wait for its source's `transaction` (see
    /// [`transaction`](crate::transaction)): a sink that writes into it
    /// adds the letter there (backstop-kafka's, in exactly-once mode). The
    /// default writes at once, as for any other delivery.
    async fn dead_letter_in(
        &self,
        letter: Message,
        destination: Option<&str>,
        transaction: &InTransaction,
    ) -> Result<(), SinkError> {
        let _ = transaction;
        self.dead_letter(letter, destination).await
    }
}
