//! A live subscription of a [`RabbitSource`](crate::RabbitSource): its
//! connection, its channel, and a task that stamps each delivery on arrival.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connection::{Connector, close_within};
use crate::error::{ConsumeError, NOT_FOUND, amqp_reply};
use crate::window::Window;

/// One item from lapin's consumer, stamped with when it arrived: `None`
/// when the consumer ended (cancelled, or its channel closed).
pub(super) type Arrival = (Instant, Option<lapin::Result<lapin::message::Delivery>>);

/// A live subscription: the connection, its channel, and the deliveries
/// its consumer received, stamped on arrival by a forwarding task (so the
/// time a delivery waits in the prefetch buffer counts against its budget).
pub(super) struct Subscription {
    connection: Connection,
    channel: Channel,
    pub(super) arrivals: mpsc::UnboundedReceiver<Arrival>,
    forwarder: tokio::task::JoinHandle<()>,
    /// Deliveries received on this channel, and those acked or nacked.
    counts: Arc<Counts>,
    /// The channel's ack window, and the task that flushes it.
    pub(super) window: Arc<Window>,
    flusher: tokio::task::JoinHandle<()>,
}

/// Deliveries received and settled on one channel: their difference is
/// what the broker counts against the prefetch.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) received: AtomicU64,
    pub(crate) settled: AtomicU64,
}

/// Forwards `consumer`'s items, stamped, until it ends.
fn forward(
    mut consumer: Consumer,
    counts: Arc<Counts>,
) -> (
    mpsc::UnboundedReceiver<Arrival>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let item = consumer.next().await;
            if matches!(item, Some(Ok(_))) {
                counts.received.fetch_add(1, Ordering::Relaxed);
            }
            let end = item.is_none();
            if tx.send((Instant::now(), item)).is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.forwarder.abort();
        self.flusher.abort();
        self.window.end("the channel that delivered it was closed");
    }
}

impl Subscription {
    pub(super) async fn open(
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
        let consumer = consume(&channel, queue, tag).await.map_err(broker)?;
        let counts = Arc::new(Counts::default());
        let (arrivals, forwarder) = forward(consumer, Arc::clone(&counts));
        let (window, flusher) = Window::open(Arc::from(queue), Arc::clone(&counts));
        Ok(Subscription {
            connection,
            channel,
            arrivals,
            forwarder,
            counts,
            window,
            flusher,
        })
    }

    /// Cancels the consumer (`basic.cancel`): the broker sends nothing more.
    /// Returns what it had already delivered and was not taken yet.
    pub(super) async fn cancel(
        &mut self,
        tag: &str,
        prefetch: u16,
    ) -> Vec<lapin::message::Delivery> {
        self.settle_credit(prefetch).await;
        if let Err(error) = self
            .channel
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(%error, "cancelling the consumer failed");
            return Vec::new();
        }
        // Everything delivered before the cancel-ok precedes the consumer's end.
        let mut held = Vec::new();
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some((_, Some(item))) = self.arrivals.recv().await {
                if let Ok(delivery) = item {
                    held.push(delivery);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("the cancelled consumer did not end within 5 s");
        }
        held
    }

    /// Waits (at most a second) until the broker can send nothing more:
    /// the prefetch is used up, or nothing arrived or was settled for 100 ms.
    ///
    /// On a quorum queue a delivery the queue sent just before it processed
    /// the `basic.cancel` reaches the client after the cancel-ok; lapin drops
    /// a delivery for a cancelled consumer, so it would stay unacked until
    /// the channel closes, and its return would spend a delivery count.
    /// Cancelling only once the credit is used up (or the flow is quiet)
    /// leaves no such delivery on the way.
    async fn settle_credit(&self, prefetch: u16) {
        let counts = &self.counts;
        let snapshot = || {
            (
                counts.received.load(Ordering::Relaxed),
                counts.settled.load(Ordering::Relaxed),
            )
        };
        let started = Instant::now();
        let mut last = snapshot();
        let mut quiet_since = started;
        loop {
            let now_counts = snapshot();
            if now_counts.0.saturating_sub(now_counts.1) >= u64::from(prefetch) {
                return;
            }
            let now = Instant::now();
            if now_counts != last {
                last = now_counts;
                quiet_since = now;
            } else if now - quiet_since >= Duration::from_millis(100) {
                return;
            }
            if now - started >= Duration::from_secs(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Consumes again on the same channel after [`cancel`](Self::cancel).
    pub(super) async fn resume(&mut self, queue: &str, tag: &str) -> lapin::Result<()> {
        let consumer = consume(&self.channel, queue, tag).await?;
        self.forwarder.abort();
        (self.arrivals, self.forwarder) = forward(consumer, Arc::clone(&self.counts));
        Ok(())
    }

    pub(super) fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Cancels the consumer (a round trip, so earlier acks on the channel were
    /// processed), then closes the channel and the connection: the broker
    /// requeues whatever is still unacked. Waits at most [`CLOSE_WITHIN`]
    /// for the broker's answers, then drops them.
    pub(super) async fn close(self, tag: &str) {
        if !self.alive() {
            return;
        }
        let closing = async {
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
        };
        close_within("the consumer", closing).await;
    }
}

async fn consume(channel: &Channel, queue: &str, tag: &str) -> lapin::Result<Consumer> {
    channel
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
}
