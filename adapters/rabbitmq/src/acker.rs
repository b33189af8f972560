//! [`RabbitAcker`]: settles one delivery by its tag, on the channel that delivered it.

use std::sync::Arc;

use backstop::delivery::Acker;
use backstop::error::AckError;
use backstop::metrics::{ACK_FAILURES, consumer_labels};
use lapin::options::BasicNackOptions;

use crate::window::Window;

/// Settles one RabbitMQ delivery.
///
/// An ack goes through its channel's ack window: it is sent together
/// with the acks of the deliveries that completed with it, as one
/// `basic.ack(multiple = true)` frame when no unsettled delivery lies
/// below it, and returns once that frame was sent (see the crate's
/// "Ack coalescing" section). A nack is one frame of its own, sent at once.
///
/// It wraps lapin's acker, which is bound to the channel that delivered the
/// message: after that channel died (and the source reconnected on a new
/// one) it refuses to settle instead of acking a stranger's delivery tag.
/// lapin's `Ok(false)` ("not acked: channel gone or acker used") is never
/// taken for success: it is [`AckError::ChannelGone`], and the broker
/// redelivers the message. Every failed frame counts in
/// `backstop_ack_failures_total`.
#[derive(Debug)]
pub struct RabbitAcker {
    acker: lapin::Acker,
    tag: u64,
    queue: Arc<str>,
    /// The ack window of the channel that delivered it (which entered its tag).
    window: Arc<Window>,
}

impl RabbitAcker {
    pub(crate) fn new(acker: lapin::Acker, tag: u64, queue: Arc<str>, window: Arc<Window>) -> Self {
        RabbitAcker {
            acker,
            tag,
            queue,
            window,
        }
    }

    /// The delivery tag this acker settles.
    pub fn delivery_tag(&self) -> u64 {
        self.tag
    }

    fn gone(&self, what: &str, detail: Option<&lapin::Error>) -> AckError {
        let detail = detail.map_or_else(
            || "the channel that delivered it is closed".to_owned(),
            ToString::to_string,
        );
        AckError::ChannelGone(format!(
            "{what} of delivery {} from queue {:?} did not reach the broker ({detail})",
            self.tag, self.queue
        ))
    }

    fn settled(&self, what: &str, result: lapin::Result<bool>) -> Result<(), AckError> {
        let failed = match result {
            Ok(true) => return Ok(()),
            Ok(false) => self.gone(what, None),
            Err(error) => self.gone(what, Some(&error)),
        };
        // Labels built only on a failure: a settled frame costs nothing here.
        metrics::counter!(ACK_FAILURES, consumer_labels(&self.queue, &self.queue, &[]))
            .increment(1);
        Err(failed)
    }
}

#[async_trait::async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        let RabbitAcker {
            acker, tag, window, ..
        } = *self;
        window.ack(tag, acker).await
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        let result = self
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue,
            })
            .await;
        if let Ok(true) = result {
            self.window.settled(self.tag);
        }
        self.settled("nack", result)
    }

    /// Nacks with requeue on the delivering channel if it is alive; if it is
    /// dead, the broker already requeued the message when it closed.
    fn abandon(self: Box<Self>) {
        if !self.acker.usable() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = self.nack(true).await {
                    tracing::debug!(%error, "nack of an abandoned delivery failed; the broker redelivers it when the channel closes");
                }
            });
        }
    }
}
