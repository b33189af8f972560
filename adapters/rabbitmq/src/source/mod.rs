//! [`RabbitSource`]: a manual-ack consumer of one queue that reconnects by itself.

mod subscription;

use std::sync::Arc;
use std::time::Duration;

use backstop::delivery::Delivery;
use backstop::metrics::{RECONNECTS, consumer_labels};
use backstop::runner::{Source, SourceError};
use lapin::types::FieldTable;
use tokio::time::Instant;

use crate::acker::RabbitAcker;
use crate::connection::Connector;
use crate::convert::message_from_delivery;
use crate::depth::DepthPoller;
use crate::error::{ConsumeError, NOT_FOUND, amqp_reply};
use crate::window::Window;

pub(crate) use self::subscription::Counts;
use self::subscription::Subscription;
use backstop::retry::Backoff;

/// A manual-ack consumer of one RabbitMQ queue that reconnects by itself.
///
/// The source owns its connection. Prefetch is set per consumer (`basic_qos`
/// with `global = false`; quorum queues refuse global QoS); match it to the
/// runner's concurrency. When the connection or the channel dies (a broker
/// restart, a closed connection), [`next`](Source::next) yields
/// [`SourceError::Disconnected`] once, then reconnects with exponential
/// backoff and resumes consuming. Deliveries still in flight on the dead
/// channel are redelivered by the broker; their ackers fail with
/// [`AckError::ChannelGone`](backstop::error::AckError::ChannelGone) and never touch
/// the new channel. A consumer cancelled by the broker (its queue was
/// deleted) ends the run with [`SourceError::Cancelled`].
///
/// **The unacked-time budget.** A delivery held unsettled longer than the
/// broker's `consumer_timeout` (30 minutes by default, a global setting that
/// a RabbitMQ 3.x client cannot read) makes the broker close the channel
/// and requeue everything unacked on it; on a quorum queue each such return
/// spends a delivery count. So every delivery gets a
/// [deadline](backstop::delivery::Delivery::deadline): its arrival (in the prefetch
/// buffer) plus [`consumer_timeout`](Self::consumer_timeout) less
/// [`timeout_margin`](Self::timeout_margin). Everything that keeps it
/// unacked counts against it (waiting in the buffer, running, in-process
/// retry sleeps, an outage); before it runs out the stack postpones it
/// through its delay queue (see
/// [`StackBuilder::postpone_through`](backstop::StackBuilder::postpone_through))
/// or dead-letters it if its attempts are spent. Set the timeout to the
/// broker's `consumer_timeout`; on 3.x the broker checks it only on its
/// channel tick (`channel_tick_interval`, 60 s by default).
///
/// **Pause.** While the runner's breaker is open or paused the source
/// cancels its consumer (`basic.cancel`); what it had already received is
/// handed back to the runner, which postpones it without running it.
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
    /// Queues [`Source::preflight`] requires: the DLQ and the delay queues.
    required: Vec<String>,
    /// How long a delivery may stay unacked before it is postponed.
    budget: Duration,
    consumer_timeout: Duration,
    margin: Duration,
    /// The consumer is cancelled (the runner's breaker is open or paused).
    paused: bool,
    /// The runner's readiness, told of each loss and reconnect.
    readiness: Option<backstop::runner::Readiness>,
    /// Reads the depths of the queue, its DLQ and its delay queues.
    depth: Option<DepthPoller>,
}

/// RabbitMQ's default `consumer_timeout`.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The default margin kept below the consumer timeout: the broker's channel
/// tick (60 s on 3.x) checks the timeout late, never early, so this covers
/// the postponing publish with room to spare.
pub const DEFAULT_TIMEOUT_MARGIN: Duration = Duration::from_secs(2 * 60);

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
        // Exported at 0 from the start, so the first failure is an increase.
        for counter in [backstop::metrics::ACK_FAILURES, RECONNECTS] {
            metrics::counter!(counter, consumer_labels(queue, queue, &[])).increment(0);
        }
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
            required: Vec::new(),
            budget: DEFAULT_CONSUMER_TIMEOUT - DEFAULT_TIMEOUT_MARGIN,
            consumer_timeout: DEFAULT_CONSUMER_TIMEOUT,
            margin: DEFAULT_TIMEOUT_MARGIN,
            paused: false,
            readiness: None,
            depth: None,
        })
    }

    /// The broker's `consumer_timeout` (30 minutes unless the broker's
    /// configuration says otherwise; a 3.x client cannot read it). Each
    /// delivery must be settled or postponed within it less the margin.
    #[must_use]
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.consumer_timeout = timeout;
        self.budget = budget(timeout, self.margin);
        self
    }

    /// How long before the consumer timeout a delivery is postponed (2
    /// minutes by default; at most half the timeout is used).
    #[must_use]
    pub fn timeout_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self.budget = budget(self.consumer_timeout, margin);
        self
    }

    /// How long a delivery may stay unacked: the consumer timeout less the margin.
    pub fn unacked_budget(&self) -> Duration {
        self.budget
    }

    /// Reports the depths of the queue, its DLQ and its delay queues through
    /// `poller` while the source lives.
    pub(crate) fn watch_depths(mut self, poller: DepthPoller) -> Self {
        self.depth = Some(poller);
        self
    }

    /// How often the depths of the queue, its DLQ and its delay queues are
    /// read (`backstop_queue_depth`, `backstop_dlq_depth`,
    /// `backstop_retry_depth`; every 15 s by default, see
    /// [`DEFAULT_DEPTH_INTERVAL`](crate::DEFAULT_DEPTH_INTERVAL)).
    #[must_use]
    pub fn depth_interval(self, every: Duration) -> Self {
        if let Some(poller) = &self.depth {
            poller.set_interval(every);
        }
        self
    }

    /// Requires these queues (the DLQ, the delay queues) to exist when the
    /// runner starts ([`Source::preflight`]).
    pub(crate) fn require(mut self, queues: Vec<String>) -> Self {
        self.required = queues;
        self
    }

    /// Skips the check that the DLQ and delay queues exist when the runner
    /// starts (for a source whose dead letters go elsewhere, such as a DLQ
    /// being read).
    #[must_use]
    pub fn skip_destination_check(mut self) -> Self {
        self.required.clear();
        self
    }

    /// The queues that must exist before the first delivery is handled.
    pub fn required_queues(&self) -> &[String] {
        &self.required
    }

    /// The queue this source consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The labels of this consumer's metrics: the queue as both `source`
    /// and `group` (see [`MetricLabels`](backstop::metrics::MetricLabels)).
    pub fn metric_labels(&self) -> backstop::metrics::MetricLabels {
        backstop::metrics::MetricLabels::new(&*self.queue, &*self.queue)
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
        if let Some(readiness) = &self.readiness {
            readiness.disconnected(format!(
                "the consumer of queue {:?} is reconnecting: {cause}",
                self.queue
            ));
        }
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

/// The consumer timeout less the margin, keeping at least half the timeout.
fn budget(timeout: Duration, margin: Duration) -> Duration {
    timeout.saturating_sub(margin).max(timeout / 2)
}

impl RabbitSource {
    /// A delivery of the channel whose ack window is `window`, entered in it.
    fn delivery(
        &self,
        window: Arc<Window>,
        arrived: Instant,
        delivery: lapin::message::Delivery,
    ) -> Delivery {
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
            Some(delivery_tag),
            redelivered,
            &properties,
            data,
        );
        window.enter(delivery_tag, arrived);
        let acker = RabbitAcker::new(acker, delivery_tag, Arc::clone(&self.queue), window);
        Delivery::new(message, acker).with_deadline(arrived + self.budget)
    }
}

impl Source for RabbitSource {
    fn attach(&mut self, health: &backstop::runner::Health) {
        let readiness = health.readiness().clone();
        readiness.reported_by_source();
        self.readiness = Some(readiness);
    }

    async fn preflight(&mut self) -> Result<(), SourceError> {
        if self.required.is_empty() {
            return Ok(());
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            SourceError::Disconnected(
                format!("checking the queues of {:?}: {e}", self.queue).into(),
            )
        };
        let connection = self
            .connector
            .connect("preflight")
            .await
            .map_err(|e| unreachable(&e))?;
        let mut missing = Vec::new();
        let mut failure = None;
        for queue in &self.required {
            // A passive declare of a missing queue closes its channel: one each.
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(error) => {
                    failure = Some(unreachable(&error));
                    break;
                }
            };
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..lapin::options::QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => {
                    let _ = channel.close(200, "OK".into()).await;
                }
                Err(error) if matches!(amqp_reply(&error), Some((NOT_FOUND, _))) => {
                    missing.push(queue.clone());
                }
                Err(error) => {
                    failure = Some(unreachable(&error));
                    break;
                }
            }
        }
        let _ = connection.close(200, "OK".into()).await;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(SourceError::Fatal(Box::new(
            backstop::runner::MissingDestinations {
                source_name: self.queue.to_string(),
                missing,
                how: format!(
                    "declare them with RabbitMq::declare(&Topology::quorum({:?})) (an existing queue keeps its arguments), \
                 or call skip_destination_check() on a source whose dead letters go elsewhere",
                    self.queue
                ),
            },
        )))
    }

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
                        if let Some(readiness) = &self.readiness {
                            readiness.connected();
                        }
                        metrics::counter!(
                            RECONNECTS,
                            consumer_labels(&self.queue, &self.queue, &[])
                        )
                        .increment(1);
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
            match subscription.arrivals.recv().await {
                Some((arrived, Some(Ok(delivery)))) => {
                    let window = Arc::clone(&subscription.window);
                    return Some(Ok(self.delivery(window, arrived, delivery)));
                }
                Some((_, Some(Err(error)))) => {
                    if let Some(lost) = self.lose(error.to_string()) {
                        return Some(Err(lost));
                    }
                }
                Some((_, None)) | None if subscription.alive() => {
                    return Some(Err(self.cancelled(format!(
                        "the broker cancelled the consumer of queue {:?} (was the queue deleted?)",
                        self.queue
                    ))));
                }
                Some((_, None)) | None => {
                    if let Some(lost) = self.lose("the channel closed".to_owned()) {
                        return Some(Err(lost));
                    }
                }
            }
        }
    }

    async fn pause(&mut self) -> Vec<Delivery> {
        self.paused = true;
        let Some(subscription) = self.active.as_mut() else {
            return Vec::new();
        };
        let held = subscription.cancel(&self.tag, self.prefetch).await;
        tracing::info!(queue = %self.queue, held = held.len(), "consumer cancelled: consumption paused");
        let window = Arc::clone(&subscription.window);
        let now = Instant::now();
        held.into_iter()
            .map(|d| self.delivery(Arc::clone(&window), now, d))
            .collect()
    }

    async fn resume(&mut self) {
        if !std::mem::replace(&mut self.paused, false) {
            return;
        }
        let Some(subscription) = self.active.as_mut() else {
            return;
        };
        if let Err(error) = subscription.resume(&self.queue, &self.tag).await {
            // The next `next` reconnects, which consumes again.
            tracing::warn!(queue = %self.queue, %error, "consuming again failed; reconnecting");
            if let Some(readiness) = &self.readiness {
                readiness.disconnected(format!(
                    "the consumer of queue {:?} is reconnecting: consuming again failed: {error}",
                    self.queue
                ));
            }
            self.active = None;
        } else {
            tracing::info!(queue = %self.queue, "consumer resumed");
        }
    }

    async fn close(&mut self) {
        self.closed = true;
        self.depth = None;
        if let Some(subscription) = self.active.take() {
            subscription.close(&self.tag).await;
        }
    }
}
