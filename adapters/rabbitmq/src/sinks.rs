//! The DLQ writer ([`RabbitDeadLetterSink`]) and the broker-delayed retry
//! writer ([`RabbitRetrySink`]), both confirmed publishes; and the
//! [`Registry`] of topologies the retry writer reads its tiers from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backstop::Message;
use backstop::dead_letter::DeadLetterSink;
use backstop::error::SinkError;
use backstop::publish::Publisher;
use backstop::retry::RetrySink;

use crate::Topology;
use crate::publisher::RabbitPublisher;
use crate::topology::{QueueKind, dlq_name};

/// Writes dead letters to `<queue>.dlq` of the queue the message was
/// consumed from ([`Meta::origin`](backstop::message::Meta::origin); never a queue a
/// header names), or to the destination the stack names (a queue, or `exchange/routing-key`).
///
/// Resolves only on the broker's confirm: an unroutable letter (the DLQ does
/// not exist) or a missing exchange is an error, and the source message
/// stays unacked.
#[derive(Clone, Debug)]
pub struct RabbitDeadLetterSink {
    publisher: RabbitPublisher,
}

impl RabbitDeadLetterSink {
    /// A sink publishing through `publisher`.
    pub fn new(publisher: RabbitPublisher) -> Self {
        RabbitDeadLetterSink { publisher }
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for RabbitDeadLetterSink {
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        let result = match destination {
            Some(destination) => self.publisher.publish(destination, &letter).await,
            None => {
                self.publisher
                    .publish_to_queue(&dlq_name(letter.meta.origin()), &letter)
                    .await
            }
        };
        result.map_err(|source| SinkError::Publish {
            destination: destination.map_or_else(|| dlq_name(letter.meta.origin()), str::to_owned),
            source,
        })
    }
}

/// Republishes a retry copy to the delay queue `<queue>.retry.<tier>` of the
/// queue it was consumed from: the shortest tier whose delay is at least the
/// requested one, else the longest. The delay queue dead-letters it back to
/// `<queue>` when its TTL expires; the attempt count travels in
/// `x-backstop-attempt`, never in `x-death`.
///
/// The tiers come from the [`Topology`](crate::Topology) declared or
/// registered on the [`RabbitMq`](crate::RabbitMq) handle. A queue without a
/// known topology, without tiers, or classic, is refused with
/// [`SinkError::Unsupported`], and the message stays unacked.
#[derive(Clone, Debug)]
pub struct RabbitRetrySink {
    publisher: RabbitPublisher,
    registry: Arc<Registry>,
}

impl RabbitRetrySink {
    pub(crate) fn new(publisher: RabbitPublisher, registry: Arc<Registry>) -> Self {
        RabbitRetrySink {
            publisher,
            registry,
        }
    }

    /// The delay queue a copy consumed from `queue` goes to for `delay`.
    pub fn destination(&self, queue: &str, delay: Duration) -> Result<String, SinkError> {
        let Some(topology) = self.registry.get(queue) else {
            return Err(SinkError::Unsupported(format!(
                "queue {queue:?} has no known topology: declare it with RabbitMq::declare(&Topology::quorum({queue:?}).retry_tiers(..)) \
                 or register it with RabbitMq::register, or keep retry delays below the policy's in-process limit"
            )));
        };
        if topology.kind() == QueueKind::Classic {
            return Err(SinkError::Unsupported(format!(
                "queue {queue:?} is a classic queue, which has no broker-delayed retry: use Topology::quorum with retry tiers, \
                 or keep retry delays below the policy's in-process limit"
            )));
        }
        let Some(tier) = topology.tier_for(delay) else {
            return Err(SinkError::Unsupported(format!(
                "queue {queue:?} has no retry tiers: add some with Topology::retry_tiers"
            )));
        };
        Ok(tier.queue_for(queue))
    }
}

#[async_trait::async_trait]
impl RetrySink for RabbitRetrySink {
    async fn retry_later(&self, copy: Message, delay: Duration) -> Result<(), SinkError> {
        let destination = self.destination(copy.meta.origin(), delay)?;
        tracing::debug!(
            message_id = %copy.meta.message_id,
            attempt = copy.meta.attempt,
            %destination,
            ?delay,
            "republishing for a broker-delayed retry"
        );
        self.publisher
            .publish_to_queue(&destination, &copy)
            .await
            .map_err(|source| SinkError::Publish {
                destination,
                source,
            })
    }
}

/// The topologies this process knows, by queue: what the retry sink reads its tiers from.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    topologies: RwLock<HashMap<String, Topology>>,
}

impl Registry {
    pub(crate) fn insert(&self, topology: &Topology) {
        self.topologies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topology.queue().to_owned(), topology.clone());
    }

    pub(crate) fn get(&self, queue: &str) -> Option<Topology> {
        self.topologies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .cloned()
    }
}
