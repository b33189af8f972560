use std::future::Future;

use super::Health;
use crate::delivery::Delivery;
use crate::error::BoxError;

/// Why a source could not yield a delivery.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection dropped; the source reconnects by itself and the runner goes on.
    #[error("connection to the broker lost, reconnecting: {0}")]
    Disconnected(#[source] BoxError),
    /// The broker cancelled the consumer (for example, the queue was deleted).
    #[error("consumer cancelled by the broker: {0}")]
    Cancelled(String),
    /// A failure the source cannot recover from.
    #[error("source failed: {0}")]
    Fatal(#[source] BoxError),
}

impl SourceError {
    /// True when the runner must stop.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SourceError::Disconnected(_))
    }
}

/// Destinations a source's messages need (its DLQ, its retry queues or
/// topics) that do not exist: found by [`Source::preflight`] when the
/// runner starts, instead of at the first message that needs them.
#[derive(Debug, thiserror::Error)]
#[error("{source_name:?} cannot start: {} do(es) not exist; {how}", quoted(.missing))]
pub struct MissingDestinations {
    /// The queue or topic consumed.
    pub source_name: String,
    /// The destinations that do not exist.
    pub missing: Vec<String>,
    /// How to create them.
    pub how: String,
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stream of deliveries from a broker.
///
/// `next` must be cancel-safe: if its future is dropped before it resolves,
/// no delivery may be lost (it stays with the broker).
///
/// A source over a fixed list of messages, whose acker counts the acks:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// use backstop::delivery::{Acker, Delivery};
/// use backstop::error::AckError;
/// use backstop::memory::MemoryBroker;
/// use backstop::runner::{Source, SourceError};
/// use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
///
/// struct Counted(Arc<AtomicUsize>);
///
/// #[async_trait::async_trait]
/// impl Acker for Counted {
///     async fn ack(self: Box<Self>) -> Result<(), AckError> {
///         self.0.fetch_add(1, Ordering::SeqCst);
///         Ok(())
///     }
///     async fn nack(self: Box<Self>, _requeue: bool) -> Result<(), AckError> {
///         Ok(())
///     }
/// }
///
/// struct Listed {
///     messages: Vec<Message>,
///     acked: Arc<AtomicUsize>,
/// }
///
/// impl Source for Listed {
///     async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
///         let message = self.messages.pop()?;
///         Some(Ok(Delivery::new(message, Counted(Arc::clone(&self.acked)))))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let acked = Arc::new(AtomicUsize::new(0));
/// let source = Listed {
///     messages: vec![Message::new("\"a\""), Message::new("\"b\"")],
///     acked: Arc::clone(&acked),
/// };
/// let dlq = MemoryBroker::new().dead_letter_sink();
/// let stack = StackBuilder::<String>::new(Arc::new(dlq))
///     .build(handler_fn(|_: String, _: Context| async { Ok::<_, HandlerError>(()) }));
/// let summary = Runner::new(source, stack).run().await?;
/// assert_eq!(summary.handled, 2);
/// assert_eq!(acked.load(Ordering::SeqCst), 2);
/// # Ok(())
/// # }
/// ```
pub trait Source: Send + 'static {
    /// The next delivery; `None` when the source has ended.
    fn next(&mut self) -> impl Future<Output = Option<Result<Delivery, SourceError>>> + Send;

    /// Checks, once before the first delivery is taken, that the
    /// destinations this source's messages need exist (its DLQ, its retry
    /// queues or topics). A missing one is a [`SourceError::Fatal`] wrapping
    /// [`MissingDestinations`]: the runner stops at once, naming it. A
    /// broker that cannot be reached is [`SourceError::Disconnected`]: the
    /// runner retries with backoff and stays not ready meanwhile. The
    /// default checks nothing.
    fn preflight(&mut self) -> impl Future<Output = Result<(), SourceError>> + Send {
        async { Ok(()) }
    }

    /// Stops fetching while the runner's [breaker](crate::breaker) is open
    /// or paused: the broker stops sending (RabbitMQ cancels the consumer;
    /// Kafka pauses the assigned partitions and keeps polling, so the member
    /// stays in its group). Returns the deliveries the source had already
    /// received and not handed out; the runner postpones them without
    /// running them. The default does nothing (the runner just stops
    /// calling [`next`](Self::next)).
    fn pause(&mut self) -> impl Future<Output = Vec<Delivery>> + Send {
        async { Vec::new() }
    }

    /// Fetches again after [`pause`](Self::pause).
    fn resume(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once by the runner before [`preflight`](Self::preflight),
    /// with the runner's [`Health`]. A source that knows when it is
    /// connected reports it on `health.readiness()`
    /// ([`Readiness::connected`](super::Readiness::connected) /
    /// [`disconnected`](super::Readiness::disconnected)), so the runner is
    /// ready again as soon as its broker is back, even with no message to
    /// deliver; a source that runs its own loop (a poll thread) registers
    /// its [`Liveness`](super::Liveness) with [`Health::watch`]. The
    /// default does neither: the runner infers the connection from what
    /// [`next`](Self::next) returns.
    fn attach(&mut self, health: &Health) {
        let _ = health;
    }

    /// Stops consuming; unsettled deliveries go back to the broker. Called once by the runner.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
