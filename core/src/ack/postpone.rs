//! [`Postponer`]: settles a delivery that spent no attempt, through the
//! delay queue when there is one, else by a nack after a backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ack::Settled;
use crate::delivery::AckHandle;
use crate::error::{AckError, Error};
use crate::message::Message;
use crate::retry::RetrySink;
use crate::{copy, lifecycle};

/// What a postponement needs: the sink and the message (shared, kept only
/// when there is a sink, or for the settlement's lifecycle event while
/// they are on).
pub(super) struct Postponer {
    sink: Option<Arc<dyn RetrySink>>,
    message: Option<Arc<Message>>,
    nack_delay: Duration,
}

impl Postponer {
    /// Postpones through `sink`, if any; keeps `message` for it, or for
    /// the lifecycle events when `traced`.
    pub(super) fn new(
        sink: Option<&Arc<dyn RetrySink>>,
        message: &Arc<Message>,
        traced: bool,
        nack_delay: Duration,
    ) -> Self {
        Postponer {
            sink: sink.cloned(),
            message: (sink.is_some() || traced).then(|| Arc::clone(message)),
            nack_delay,
        }
    }

    /// True when there is a delay queue to postpone through.
    pub(super) fn has_sink(&self) -> bool {
        self.sink.is_some()
    }

    /// The message, if kept.
    pub(super) fn message(&self) -> Option<&Message> {
        self.message.as_deref()
    }

    /// Publishes a confirmed copy with the same attempt count to the delay
    /// queue, then acks; without a sink, or if the copy is not confirmed,
    /// nacks with requeue after about the nack delay (a classic queue or
    /// Kafka spends nothing on it).
    pub(super) async fn settle(self, acker: AckHandle, error: Error) -> Result<Settled, AckError> {
        if let (Some(sink), Some(message)) = (&self.sink, &self.message) {
            let due = SystemTime::now() + self.nack_delay;
            let copy = copy::postponed(message, due);
            match sink.retry_later(copy, self.nack_delay).await {
                Ok(()) => {
                    acker.ack().await?;
                    lifecycle::postponed(self.message(), &error);
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
        lifecycle::nacked(self.message(), &error);
        Ok(Settled::Nacked(error))
    }
}
