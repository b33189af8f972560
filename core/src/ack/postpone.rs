//! [`Postponer`]: settles a delivery that spent no attempt, through the
//! delay queue when there is one, else by a nack after a backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::retry::RetrySink;
use crate::{AckError, AckHandle, Error, Message, Settled, copy};

/// What a postponement needs: the sink and the message (shared, kept only
/// when there is a sink).
pub(super) struct Postponer {
    through: Option<(Arc<dyn RetrySink>, Arc<Message>)>,
    nack_delay: Duration,
}

impl Postponer {
    pub(super) fn new(
        sink: Option<&Arc<dyn RetrySink>>,
        message: &Arc<Message>,
        nack_delay: Duration,
    ) -> Self {
        Postponer {
            through: sink.map(|sink| (Arc::clone(sink), Arc::clone(message))),
            nack_delay,
        }
    }

    /// True when there is a delay queue to postpone through.
    pub(super) fn has_sink(&self) -> bool {
        self.through.is_some()
    }

    /// Publishes a confirmed copy with the same attempt count to the delay
    /// queue, then acks; without a sink, or if the copy is not confirmed,
    /// nacks with requeue after about the nack delay (a classic queue or
    /// Kafka spends nothing on it).
    pub(super) async fn settle(self, acker: AckHandle, error: Error) -> Result<Settled, AckError> {
        if let Some((sink, message)) = self.through {
            let due = SystemTime::now() + self.nack_delay;
            let copy = copy::postponed(&message, due);
            match sink.retry_later(copy, self.nack_delay).await {
                Ok(()) => {
                    acker.ack().await?;
                    return Ok(Settled::Postponed(error));
                }
                Err(sink_error) => {
                    tracing::warn!(
                        message_id = %message.meta.message_id,
                        error = %sink_error,
                        "postponing through the delay queue failed; nacking the message instead"
                    );
                    tokio::time::sleep(crate::retry::equal_jitter(self.nack_delay)).await;
                }
            }
        }
        acker.nack(true).await?;
        Ok(Settled::Nacked(error))
    }
}
