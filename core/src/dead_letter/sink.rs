use crate::error::SinkError;
use crate::message::Message;
use crate::transaction::InTransaction;

/// Where dead letters go.
///
/// `dead_letter` must resolve only once the broker confirmed the write: only
/// then does the stack ack the source. `letter` already carries the wire
/// headers ([`copy::dead_letter`](crate::copy::dead_letter)). `destination`
/// overrides the adapter's default DLQ name (`<queue>.dlq`,
/// `<topic>.<group>.dlq`).
///
/// A sink that keeps its letters in memory, confirming each write:
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use backstop::dead_letter::DeadLetterSink;
/// use backstop::error::SinkError;
/// use backstop::memory::MemoryBroker;
/// use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
///
/// #[derive(Default)]
/// struct Kept(Mutex<Vec<(Option<String>, Message)>>);
///
/// #[async_trait::async_trait]
/// impl DeadLetterSink for Kept {
///     async fn dead_letter(&self, letter: Message, destination: Option<&str>) -> Result<(), SinkError> {
///         // A real sink returns only once its broker confirmed the write.
///         self.0.lock().unwrap().push((destination.map(str::to_owned), letter));
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// broker.publish_now("orders", Message::new("\"bad\""))?;
/// let kept = Arc::new(Kept::default());
/// let stack = StackBuilder::<String>::new(kept.clone()).build(handler_fn(
///     |_: String, _: Context| async { Err::<(), _>(HandlerError::permanent("no such customer")) },
/// ));
/// let summary = Runner::new(broker.consume("orders", 1).until_drained(), stack).run().await?;
///
/// assert_eq!(summary.dead_lettered, 1);
/// let letters = kept.0.lock().unwrap();
/// assert_eq!(letters[0].1.header(backstop::wire::ERROR_KIND), Some("permanent"));
/// assert_eq!(letters[0].1.payload, "\"bad\"");
/// # Ok(())
/// # }
/// ```
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
