//! [`MemoryBroker`]: an in-memory broker with real semantics.
//!
//! Queues are created on first use. A delivery stays unacked until it is
//! settled; a nack with requeue, a dropped delivery or a closed consumer puts
//! it back at the head of its queue, marked redelivered. Delayed messages
//! become visible at their due time. A DLQ is an ordinary queue you can
//! consume. A queue may have a maximum length, past which publishes are
//! refused (like RabbitMQ's `reject-publish`). It is the embedded default for
//! the quickstart and for fast tests of every layer.

mod queue;
mod settler;
mod sinks;
mod source;

pub use self::queue::QueueStats;
pub use self::sinks::{MemoryDeadLetterSink, MemoryRetrySink};
pub use self::source::MemorySource;
pub use crate::dead_letter::dlq_name;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use self::queue::Queue;
use crate::message::Message;
use crate::publish::{PublishError, Publisher};
use crate::{attempt, wire};

/// The queues by name. foldhash, not SipHash: every fetch and every ack
/// looks its queue up, and the names are the application's own.
pub(crate) type Queues = HashMap<String, Queue, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub(crate) struct Shared {
    queues: Mutex<Queues>,
    tags: AtomicU64,
    consumers: AtomicU64,
    sequence: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queues> {
        // No operation leaves a queue half-updated, so a poisoned lock is still consistent.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_tag(&self) -> u64 {
        self.tags.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn next_consumer(&self) -> u64 {
        self.consumers.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// An in-memory broker; cheap to clone (all clones share the queues).
///
/// ```
/// use backstop::Message;
/// use backstop::memory::MemoryBroker;
///
/// let broker = MemoryBroker::new();
/// broker.set_max_len("orders", Some(1));
/// broker.publish_now("orders", Message::new("first")).expect("there is room");
/// // A full queue refuses the write: the publisher is told, nothing is dropped silently.
/// assert!(matches!(
///     broker.publish_now("orders", Message::new("second")),
///     Err(backstop::publish::PublishError::Full(_))
/// ));
/// assert_eq!(broker.stats("orders").ready, 1);
/// assert_eq!(broker.peek("orders")[0].payload, "first");
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        MemoryBroker::default()
    }

    /// Limits `queue` to `max_len` messages (ready, delayed and unacked);
    /// further publishes are refused with [`PublishError::Full`]. `None` lifts the limit.
    pub fn set_max_len(&self, queue: &str, max_len: Option<usize>) {
        let mut queues = self.shared.lock();
        queues.entry(queue.to_owned()).or_default().max_len = max_len;
    }

    /// Publishes `message` to `queue`; it is visible at once.
    pub fn publish_now(&self, queue: &str, message: Message) -> Result<(), PublishError> {
        self.enqueue(queue, message, None)
    }

    /// Publishes `message` to `queue`, visible after `delay`.
    pub fn publish_delayed(
        &self,
        queue: &str,
        message: Message,
        delay: Duration,
    ) -> Result<(), PublishError> {
        self.enqueue(queue, message, Some(delay))
    }

    fn enqueue(
        &self,
        name: &str,
        mut message: Message,
        delay: Option<Duration>,
    ) -> Result<(), PublishError> {
        let id = message.id_for_publish();
        message
            .headers
            .insert(wire::MESSAGE_ID.to_owned(), id.clone());
        let attempt = attempt::from_headers(&message.headers);
        let timestamp = Some(std::time::SystemTime::now());
        // The old metadata is dropped here, not under the lock.
        message.meta = crate::message::Meta::default();
        let mut queues = self.shared.lock();
        let queue = queues.entry(name.to_owned()).or_default();
        if queue.max_len.is_some_and(|max| queue.len() >= max) {
            queue.stats.rejected += 1;
            return Err(PublishError::Full(name.to_owned()));
        }
        message.meta = crate::message::Meta {
            source: Arc::clone(queue.name.get_or_insert_with(|| name.into())),
            attempt,
            message_id: id,
            timestamp,
            ..crate::message::Meta::default()
        };
        queue.stats.published += 1;
        match delay {
            Some(delay) if !delay.is_zero() => {
                let seq = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
                queue
                    .delayed
                    .insert((Instant::now() + delay, seq), Arc::new(message));
            }
            _ => queue.ready.push_back(Arc::new(message)),
        }
        queue.notify.notify_waiters();
        Ok(())
    }

    /// A consumer of `queue` holding at most `prefetch` unsettled deliveries.
    pub fn consume(&self, queue: &str, prefetch: usize) -> MemorySource {
        MemorySource::new(Arc::clone(&self.shared), queue, prefetch)
    }

    /// The counts of `queue` (all zero if it does not exist).
    pub fn stats(&self, queue: &str) -> QueueStats {
        self.shared
            .lock()
            .get(queue)
            .map(Queue::stats)
            .unwrap_or_default()
    }

    /// The ready messages of `queue`, oldest first, without consuming them.
    pub fn peek(&self, queue: &str) -> Vec<Message> {
        self.shared
            .lock()
            .get(queue)
            .map(|q| q.ready.iter().map(|m| Message::clone(m)).collect())
            .unwrap_or_default()
    }

    /// The names of the queues that exist.
    pub fn queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// A [`DeadLetterSink`](crate::dead_letter::DeadLetterSink) writing to `<source>.dlq`.
    pub fn dead_letter_sink(&self) -> MemoryDeadLetterSink {
        MemoryDeadLetterSink {
            broker: self.clone(),
        }
    }

    /// A [`RetrySink`](crate::retry::RetrySink) republishing to the source queue with a delay.
    pub fn retry_sink(&self) -> MemoryRetrySink {
        MemoryRetrySink {
            broker: self.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for MemoryBroker {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        self.publish_now(destination, message.clone())
    }
}

#[cfg(test)]
mod tests;
