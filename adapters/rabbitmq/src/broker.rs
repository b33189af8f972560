//! [`RabbitMq`]: the handle a worker starts from.

use std::sync::Arc;

use lapin::Channel;
use lapin::types::ShortString;

use crate::connection::{ConnectOptions, Connector, SharedConnection};
use crate::depth::{DEFAULT_DEPTH_INTERVAL, DepthPoller, ready_count};
use crate::error::{ConnectError, ConsumeError, NOT_FOUND, TopologyError, amqp_reply};
use crate::publisher::RabbitPublisher;
use crate::sinks::{RabbitDeadLetterSink, RabbitRetrySink, Registry};
use crate::source::RabbitSource;
use crate::topology::Topology;

/// A RabbitMQ broker: declares topology and makes sources, publishers and sinks.
///
/// Cheap to clone. Publishers, sinks and declarations share one connection
/// (reopened on demand after a loss); every [`RabbitSource`] has a
/// connection of its own.
#[derive(Clone, Debug)]
pub struct RabbitMq {
    connector: Arc<Connector>,
    shared: Arc<SharedConnection>,
    registry: Arc<Registry>,
}

impl RabbitMq {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`, the vhost
    /// URL-encoded: `%2f` for `/`) with default [`ConnectOptions`]. For a
    /// cluster, give the nodes' URLs comma-separated
    /// (`amqp://…:5681/%2f,amqp://…:5682/%2f`, see [`node_urls`](crate::node_urls)):
    /// every connection tries them in turn, from the one that answered last.
    pub async fn connect(url: impl Into<String>) -> Result<Self, ConnectError> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects to `url` (one URL or a comma-separated node list) with
    /// `options`. The shared connection is opened now, so a wrong URL or a
    /// broker whose nodes are all down fails here.
    pub async fn connect_with(
        url: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Self, ConnectError> {
        let connector = Arc::new(Connector::new(url.into(), options)?);
        let shared = Arc::new(SharedConnection::new(Arc::clone(&connector), "publisher"));
        shared.get().await?;
        Ok(RabbitMq {
            connector,
            shared,
            registry: Arc::default(),
        })
    }

    /// Declares `topology` (idempotent: declaring the same shape again is a
    /// no-op) and registers it for the retry sink.
    pub async fn declare(&self, topology: &Topology) -> Result<(), TopologyError> {
        topology.validate()?;
        let channel = self.shared.channel().await?;
        let result = topology.declare_on(&channel).await;
        close_quietly(&channel).await;
        result?;
        self.register(topology);
        Ok(())
    }

    /// Tells the retry sink about a topology declared elsewhere (by ops, or another process).
    pub fn register(&self, topology: &Topology) {
        self.registry.insert(topology);
    }

    /// A consumer of `queue` holding at most `prefetch` unsettled deliveries
    /// (use the same number as the runner's concurrency). It subscribes now:
    /// a queue that does not exist fails here. Its DLQ (`<queue>.dlq`) and,
    /// for a topology declared or registered on this handle, its delay
    /// queues must exist when the runner starts ([`Source::preflight`](backstop::runner::Source::preflight));
    /// [`RabbitSource::skip_destination_check`] opts out. While it lives, the
    /// depths of the queue, its DLQ and its delay queues are read on an
    /// interval ([`RabbitSource::depth_interval`]) into
    /// `backstop_queue_depth`, `backstop_dlq_depth` and `backstop_retry_depth`.
    pub async fn source(&self, queue: &str, prefetch: usize) -> Result<RabbitSource, ConsumeError> {
        let dlq = crate::topology::dlq_name(queue);
        let tiers: Vec<(String, String)> = self
            .registry
            .get(queue)
            .map(|topology| {
                let tiers = topology.tiers().iter();
                tiers
                    .map(|t| (t.name().to_owned(), t.queue_for(queue)))
                    .collect()
            })
            .unwrap_or_default();
        let mut required = vec![dlq.clone()];
        required.extend(tiers.iter().map(|(_, delay_queue)| delay_queue.clone()));
        let source = RabbitSource::open(Arc::clone(&self.connector), queue, prefetch).await?;
        let depths = DepthPoller::start(
            Arc::clone(&self.shared),
            queue,
            &dlq,
            &tiers,
            DEFAULT_DEPTH_INTERVAL,
        );
        Ok(source.require(required).watch_depths(depths))
    }

    /// A confirmed publisher on a channel of its own.
    pub fn publisher(&self) -> RabbitPublisher {
        RabbitPublisher::new(Arc::clone(&self.shared))
    }

    /// The DLQ writer (`<original source>.dlq`), on a channel of its own.
    pub fn dead_letter_sink(&self) -> RabbitDeadLetterSink {
        RabbitDeadLetterSink::new(self.publisher())
    }

    /// The broker-delayed retry writer, on a channel of its own; it reads the
    /// tiers of the topologies declared or registered on this handle.
    pub fn retry_sink(&self) -> RabbitRetrySink {
        RabbitRetrySink::new(self.publisher(), Arc::clone(&self.registry))
    }

    /// A new channel on the shared connection, for anything this crate does
    /// not cover (close it when done).
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        self.shared.channel().await
    }

    /// The number of ready messages in `queue` (unacked ones not counted).
    pub async fn message_count(&self, queue: &str) -> Result<u32, TopologyError> {
        let channel = self.shared.channel().await?;
        let name = ShortString::try_new(queue).map_err(|_| TopologyError::NameTooLong {
            name: queue.to_owned(),
        })?;
        let result = ready_count(&channel, name).await;
        close_quietly(&channel).await;
        match result {
            Ok(count) => Ok(count),
            Err(source) => Err(match amqp_reply(&source) {
                Some((NOT_FOUND, reason)) => TopologyError::Mismatch {
                    name: queue.to_owned(),
                    reason,
                },
                _ => TopologyError::Broker {
                    name: queue.to_owned(),
                    source,
                },
            }),
        }
    }

    /// Closes the shared connection (sources close their own; a later use reopens it).
    pub async fn close(&self) {
        self.shared.close().await;
    }
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected()
        && let Err(error) = channel.close(200, "OK".into()).await
    {
        tracing::debug!(%error, "closing a channel failed");
    }
}
