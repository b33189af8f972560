//! [`OutboxWriter`]: a handler's publishes, written into its inbox transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backstop::Message;
use backstop::outgoing::{Outgoing, PublishFailed, write_failed};

use super::Outbox;
use crate::PostgresError;
use crate::inbox::{InboxError, InboxTx};

/// The back-end of `Context::publish` for one inbox attempt: each message
/// becomes an outbox row in the attempt's transaction.
pub(crate) struct OutboxWriter {
    outbox: Outbox,
    tx: InboxTx,
    wrote: Arc<AtomicBool>,
}

impl OutboxWriter {
    /// The writer of one attempt; `wrote` is set once a row was written.
    pub(crate) fn new(outbox: Outbox, tx: InboxTx, wrote: Arc<AtomicBool>) -> Self {
        OutboxWriter { outbox, tx, wrote }
    }
}

/// True for errors a retry cannot fix: the inbox's rule for a statement's
/// SQLSTATE, and headers that cannot be written.
fn permanent(error: &PostgresError) -> bool {
    match error {
        PostgresError::Query { source, .. } => crate::inbox::tx::permanent_code(source.code()),
        PostgresError::Unexpected { .. } => true,
        _ => false,
    }
}

#[async_trait::async_trait]
impl Outgoing for OutboxWriter {
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        let client = self.tx.client().await.map_err(|e: InboxError| {
            let permanent = e.is_permanent();
            write_failed(destination, permanent, e)
        })?;
        let written = self.outbox.insert(&**client, destination, &message).await;
        drop(client);
        match written {
            Ok(seq) => {
                self.wrote.store(true, Ordering::Release);
                tracing::trace!(seq, destination, message_id = %message.meta.message_id, "outbox row written");
                Ok(())
            }
            Err(error) => {
                // A failed statement aborted the transaction, and one that
                // timed out may still run: if the handler goes on anyway, the
                // inbox rolls back instead of committing.
                match &error {
                    PostgresError::Query { source, .. } => self.tx.note_failure(source),
                    // Abandoned on the client: it may still run.
                    PostgresError::Timeout { .. } => self.tx.poison(),
                    // Nothing ran (headers that are not JSON): the
                    // transaction is intact; the message is not published.
                    _ => {}
                }
                Err(write_failed(destination, permanent(&error), error))
            }
        }
    }
}
