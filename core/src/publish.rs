//! [`Publisher`]: confirmed publishing, the contract every adapter's publisher keeps.

use crate::error::BoxError;
use crate::message::Message;

/// A failed publish. The caller still owns the message (it passed a reference)
/// and may retry, spool or dead-letter it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker answered with a negative confirm.
    #[error("broker refused the message (negative confirm)")]
    Nacked,
    /// The message could not be routed to any queue (returned as unroutable).
    #[error("message is unroutable: no queue is bound for {0:?}")]
    Unroutable(String),
    /// The destination does not exist.
    #[error("destination {0:?} does not exist")]
    MissingDestination(String),
    /// The destination is full and rejects publishes.
    #[error("destination {0:?} is full and rejects new messages")]
    Full(String),
    /// The message is larger than the broker accepts.
    #[error("message of {size} bytes is larger than the broker accepts")]
    TooLarge {
        /// The message's size.
        size: usize,
    },
    /// The message or destination can never be published as it is (a name
    /// or header the broker refuses); retrying does not help.
    #[error("message cannot be published: {0}")]
    Invalid(String),
    /// The broker refuses this client the destination (an ACL, a permission).
    #[error("not authorised to publish to {0:?}")]
    Unauthorized(String),
    /// No confirm arrived in time.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(std::time::Duration),
    /// The broker could not be reached, or the channel failed.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl PublishError {
    /// True when publishing this message to this destination again cannot
    /// succeed until something outside the publisher changes: the message
    /// is too large or invalid, the destination does not exist or routes it
    /// nowhere, or this client may not publish there. `Nacked`, `Full`,
    /// `Timeout` and `Unavailable` are transient: a later try may pass.
    ///
    /// ```
    /// use backstop::publish::PublishError;
    ///
    /// assert!(PublishError::TooLarge { size: 2_000_000 }.is_permanent());
    /// assert!(PublishError::Unroutable("orders.dlq".into()).is_permanent());
    /// assert!(!PublishError::Nacked.is_permanent());
    /// ```
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishError::Nacked
            | PublishError::Full(_)
            | PublishError::Timeout(_)
            | PublishError::Unavailable(_) => false,
            PublishError::Unroutable(_)
            | PublishError::MissingDestination(_)
            | PublishError::TooLarge { .. }
            | PublishError::Invalid(_)
            | PublishError::Unauthorized(_) => true,
        }
    }
}

/// Publishes messages and resolves only when the broker confirmed them.
///
/// The message id ([`Message::id_for_publish`]) travels as the
/// `x-backstop-message-id` header.
///
/// A publisher that refuses oversized messages before it asks the broker,
/// in front of another one:
///
/// ```
/// use backstop::Message;
/// use backstop::memory::MemoryBroker;
/// use backstop::publish::{PublishError, Publisher};
///
/// struct Bounded<P> {
///     inner: P,
///     max: usize,
/// }
///
/// #[async_trait::async_trait]
/// impl<P: Publisher> Publisher for Bounded<P> {
///     async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
///         if message.payload.len() > self.max {
///             // Permanent: no retry can make it fit.
///             return Err(PublishError::TooLarge { size: message.payload.len() });
///         }
///         self.inner.publish(destination, message).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), PublishError> {
/// let broker = MemoryBroker::new();
/// let publisher = Bounded { inner: broker.clone(), max: 8 };
/// publisher.publish("orders", &Message::new("small")).await?;
/// let refused = publisher.publish("orders", &Message::new("far too large")).await;
/// assert!(refused.is_err_and(|e| e.is_permanent()));
/// assert_eq!(broker.stats("orders").ready, 1);
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `message` to `destination` (a queue or topic) and waits for the confirm.
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError>;
}

/// A shared publisher publishes as the one it shares (`Arc<dyn Publisher>`
/// included), so one publisher can serve several owners.
#[async_trait::async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        (**self).publish(destination, message).await
    }
}
