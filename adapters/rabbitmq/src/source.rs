//! [`RabbitSource`]: a manual-ack consumer of one queue that reconnects by itself.

use std::sync::Arc;

use backstop::{Delivery, Source, SourceError};
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use crate::acker::RabbitAcker;
use crate::backoff::Backoff;
use crate::connection::Connector;
use crate::convert::message_from_delivery;
use crate::error::{ConsumeError, NOT_FOUND, amqp_reply};

/// A live subscription: the connection, its channel and the consumer.
struct Subscription {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl Subscription {
    async fn open(
        connector: &Connector,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Self, ConsumeError> {
        let connection = connector.connect("consumer").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(crate::error::ConnectError::Channel)?;
        let broker = |source: lapin::Error| match amqp_reply(&source) {
            Some((NOT_FOUND, _)) => ConsumeError::QueueNotFound {
                queue: queue.to_owned(),
            },
            _ => ConsumeError::Broker {
                queue: queue.to_owned(),
                source,
            },
        };
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(broker)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions {
                    no_ack: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(Subscription {
            connection,
            channel,
            consumer,
        })
    }

    fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Cancels the consumer (a round trip, so earlier acks on the channel were
    /// processed), then closes the channel and the connection: the broker
    /// requeues whatever is still unacked.
    async fn close(self, tag: &str) {
        if !self.alive() {
            return;
        }
        if let Err(error) = self
            .channel
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(%error, "cancelling the consumer failed");
        }
        if let Err(error) = self.channel.close(200, "OK".into()).await {
            tracing::debug!(%error, "closing the consumer channel failed");
        }
        if let Err(error) = self.connection.close(200, "OK".into()).await {
            tracing::debug!(%error, "closing the consumer connection failed");
        }
    }
}

/// A manual-ack consumer of one RabbitMQ queue that reconnects by itself.
///
/// The source owns its connection. Prefetch is set per consumer (`basic_qos`
/// with `global = false`; quorum queues refuse global QoS); match it to the
/// runner's concurrency. When the connection or the channel dies (a broker
/// restart, a closed connection), [`next`](Source::next) yields
/// [`SourceError::Disconnected`] once, then reconnects with exponential
/// backoff and resumes consuming. Deliveries still in flight on the dead
/// channel are redelivered by the broker; their ackers fail with
/// [`AckError::ChannelGone`](backstop::AckError::ChannelGone) and never touch
/// the new channel. A consumer cancelled by the broker (its queue was
/// deleted) ends the run with [`SourceError::Cancelled`].
///
/// A delivery held unsettled longer than the broker's `consumer_timeout`
/// (30 minutes by default) makes the broker close the channel: the source
/// reconnects and the message is redelivered, so keep handlers (or their
/// timeouts) well below it.
///
/// Made by [`RabbitMq::source`](crate::RabbitMq::source).
pub struct RabbitSource {
    connector: Arc<Connector>,
    queue: Arc<str>,
    prefetch: u16,
    tag: String,
    active: Option<Subscription>,
    /// A loss was reported and the source is reconnecting.
    lost: bool,
    backoff: Backoff,
    closed: bool,
}

impl std::fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSource")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("consumer_tag", &self.tag)
            .field(
                "connected",
                &self.active.as_ref().is_some_and(Subscription::alive),
            )
            .field("closed", &self.closed)
            .finish()
    }
}

impl RabbitSource {
    /// Subscribes to `queue` with `prefetch` (1 ..= 65535) unsettled deliveries.
    pub(crate) async fn open(
        connector: Arc<Connector>,
        queue: &str,
        prefetch: usize,
    ) -> Result<Self, ConsumeError> {
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        let id = backstop::message::new_message_id();
        let tag = format!("backstop-{}", &id[..16]);
        let active = Subscription::open(&connector, queue, prefetch, &tag).await?;
        let backoff = Backoff::new(
            connector.options.reconnect_initial,
            connector.options.reconnect_max,
        );
        Ok(RabbitSource {
            connector,
            queue: Arc::from(queue),
            prefetch,
            tag,
            active: Some(active),
            lost: false,
            backoff,
            closed: false,
        })
    }

    /// The queue this source consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The prefetch (most unsettled deliveries); use it as the runner's concurrency.
    pub fn prefetch(&self) -> usize {
        usize::from(self.prefetch)
    }

    /// True while the source holds a live subscription.
    pub fn is_connected(&self) -> bool {
        self.active.as_ref().is_some_and(Subscription::alive)
    }

    /// Records a loss; the first one since the last good subscription is reported.
    fn lose(&mut self, cause: String) -> Option<SourceError> {
        self.active = None;
        if self.lost {
            tracing::warn!(queue = %self.queue, %cause, "reconnecting the consumer failed; retrying with backoff");
            return None;
        }
        self.lost = true;
        Some(SourceError::Disconnected(
            format!(
                "consumer of queue {:?} lost its connection: {cause}",
                self.queue
            )
            .into(),
        ))
    }

    fn cancelled(&mut self, reason: String) -> SourceError {
        self.active = None;
        self.closed = true;
        SourceError::Cancelled(reason)
    }
}

impl Source for RabbitSource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        loop {
            if self.closed {
                return None;
            }
            let Some(subscription) = self.active.as_mut() else {
                tokio::time::sleep(self.backoff.next_delay()).await;
                match Subscription::open(&self.connector, &self.queue, self.prefetch, &self.tag)
                    .await
                {
                    Ok(subscription) => {
                        tracing::info!(queue = %self.queue, "consumer reconnected and resumed");
                        self.active = Some(subscription);
                        self.lost = false;
                        self.backoff.reset();
                    }
                    Err(ConsumeError::QueueNotFound { queue }) => {
                        return Some(Err(self.cancelled(format!(
                            "queue {queue:?} no longer exists (it was deleted while the consumer reconnected)"
                        ))));
                    }
                    Err(error) => {
                        if let Some(lost) = self.lose(error.to_string()) {
                            return Some(Err(lost));
                        }
                    }
                }
                continue;
            };
            match subscription.consumer.next().await {
                Some(Ok(delivery)) => {
                    let lapin::message::Delivery {
                        delivery_tag,
                        redelivered,
                        properties,
                        data,
                        acker,
                        ..
                    } = delivery;
                    let message = message_from_delivery(
                        &self.queue,
                        delivery_tag,
                        redelivered,
                        &properties,
                        data,
                    );
                    let acker = RabbitAcker::new(acker, delivery_tag, Arc::clone(&self.queue));
                    return Some(Ok(Delivery::new(message, acker)));
                }
                Some(Err(error)) => {
                    if let Some(lost) = self.lose(error.to_string()) {
                        return Some(Err(lost));
                    }
                }
                None if subscription.alive() => {
                    return Some(Err(self.cancelled(format!(
                        "the broker cancelled the consumer of queue {:?} (was the queue deleted?)",
                        self.queue
                    ))));
                }
                None => {
                    if let Some(lost) = self.lose("the channel closed".to_owned()) {
                        return Some(Err(lost));
                    }
                }
            }
        }
    }

    async fn close(&mut self) {
        self.closed = true;
        if let Some(subscription) = self.active.take() {
            subscription.close(&self.tag).await;
        }
    }
}
