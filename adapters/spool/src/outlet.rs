//! Where spooled messages go: a [`Publisher`] or a [`DeadLetterSink`], and
//! how their failures are classified.
//!
//! | Failure | Class | Publish | Relay |
//! |---|---|---|---|
//! | `Unavailable`, `Timeout`, attempt timeout | [`Class::Unreachable`] | retry, then spool; later publishes go straight to the spool until the relay gets a confirm | back off, probe with the oldest record |
//! | `Nacked`, `Full` | [`Class::Refused`] | retry, then spool | the key waits, retried with backoff |
//! | `TooLarge`, `Invalid`, `Unauthorized` | [`Class::Permanent`] | returned to the caller, not spooled | moved to the refused records (`Spool::refused`), logged as an error; the key goes on |
//! | `Unroutable`, `MissingDestination`, a sink that cannot take the message | [`Class::Permanent`] | returned to the caller, not spooled | the key waits until an operator fixes the destination, retried with backoff, logged as an error |

use std::time::Duration;

use backstop::Message;
use backstop::dead_letter::DeadLetterSink;
use backstop::error::SinkError;
use backstop::publish::{PublishError, Publisher};

/// How a failed send is handled; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The broker could not be reached or did not answer.
    Unreachable,
    /// The broker answered no for now (a full queue, a negative confirm).
    Refused,
    /// Retrying cannot fix it.
    Permanent,
}

impl Class {
    pub(crate) fn of_publish(error: &PublishError) -> Class {
        if error.is_permanent() {
            return Class::Permanent;
        }
        match error {
            PublishError::Unavailable(_) | PublishError::Timeout(_) => Class::Unreachable,
            _ => Class::Refused,
        }
    }
}

/// True when the broker will never take this message as it is: too large,
/// invalid, or this client may not publish there. The relay sets such a
/// spooled record aside; a missing or unroutable destination is something
/// an operator fixes, so the record waits for it.
pub(crate) fn refused_for_good(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::TooLarge { .. } | PublishError::Invalid(_) | PublishError::Unauthorized(_)
    )
}

/// The metric label of a publish failure.
pub(crate) fn publish_reason(error: &PublishError) -> &'static str {
    match error {
        PublishError::Nacked => "nacked",
        PublishError::Unroutable(_) => "unroutable",
        PublishError::MissingDestination(_) => "missing_destination",
        PublishError::Full(_) => "full",
        PublishError::TooLarge { .. } => "too_large",
        PublishError::Invalid(_) => "invalid",
        PublishError::Unauthorized(_) => "unauthorized",
        PublishError::Timeout(_) => "timeout",
        PublishError::Unavailable(_) => "unavailable",
        _ => "other",
    }
}

/// A sender of messages: what the publish path tries first and the relay drains to.
#[async_trait::async_trait]
pub(crate) trait Outlet: Send + Sync + 'static {
    /// The sender's own error, returned to the caller when it is permanent.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends `message` to `destination` and waits for the broker's confirm.
    async fn send(&self, destination: Option<&str>, message: &Message) -> Result<(), Self::Error>;

    /// How `error` is handled.
    fn class(error: &Self::Error) -> Class;

    /// The metric label of `error`.
    fn reason(error: &Self::Error) -> &'static str;

    /// True when the broker will never take the message (see [`refused_for_good`]).
    fn for_good(error: &Self::Error) -> bool;
}

/// A failed attempt: the outlet's error, or no answer within the attempt timeout.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    Outlet(E),
    Elapsed(Duration),
}

impl<E: std::error::Error + 'static> std::fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Outlet(e) => write!(f, "{}", backstop::error::chain(e)),
            Failure::Elapsed(d) => write!(f, "no confirm within the attempt timeout of {d:?}"),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> Failure<E> {
    /// True when the broker will never take the message as it is.
    pub(crate) fn for_good<O: Outlet<Error = E>>(&self) -> bool {
        match self {
            Failure::Outlet(e) => O::for_good(e),
            Failure::Elapsed(_) => false,
        }
    }

    pub(crate) fn class<O: Outlet<Error = E>>(&self) -> Class {
        match self {
            Failure::Outlet(e) => O::class(e),
            Failure::Elapsed(_) => Class::Unreachable,
        }
    }

    pub(crate) fn reason<O: Outlet<Error = E>>(&self) -> &'static str {
        match self {
            Failure::Outlet(e) => O::reason(e),
            Failure::Elapsed(_) => "attempt_timeout",
        }
    }
}

/// One attempt, bounded by `timeout`.
pub(crate) async fn attempt<O: Outlet>(
    outlet: &O,
    destination: Option<&str>,
    message: &Message,
    timeout: Duration,
) -> Result<(), Failure<O::Error>> {
    match tokio::time::timeout(timeout, outlet.send(destination, message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Outlet(e)),
        Err(_) => Err(Failure::Elapsed(timeout)),
    }
}

/// A [`Publisher`] as an outlet: every record has a destination.
#[derive(Debug)]
pub(crate) struct PublisherOutlet<P>(pub(crate) P);

#[async_trait::async_trait]
impl<P: Publisher> Outlet for PublisherOutlet<P> {
    type Error = PublishError;

    async fn send(&self, destination: Option<&str>, message: &Message) -> Result<(), PublishError> {
        // A publisher's records always carry their destination.
        self.0
            .publish(destination.unwrap_or_default(), message)
            .await
    }

    fn class(error: &PublishError) -> Class {
        Class::of_publish(error)
    }

    fn reason(error: &PublishError) -> &'static str {
        publish_reason(error)
    }

    fn for_good(error: &PublishError) -> bool {
        refused_for_good(error)
    }
}

/// A [`DeadLetterSink`] as an outlet: `None` lets the sink route by the letter's origin.
#[derive(Debug)]
pub(crate) struct SinkOutlet<S>(pub(crate) S);

#[async_trait::async_trait]
impl<S: DeadLetterSink> Outlet for SinkOutlet<S> {
    type Error = SinkError;

    async fn send(&self, destination: Option<&str>, message: &Message) -> Result<(), SinkError> {
        self.0.dead_letter(message.clone(), destination).await
    }

    fn class(error: &SinkError) -> Class {
        match error {
            SinkError::Publish { source, .. } => Class::of_publish(source),
            SinkError::Unsupported(_) => Class::Permanent,
        }
    }

    fn reason(error: &SinkError) -> &'static str {
        match error {
            SinkError::Publish { source, .. } => publish_reason(source),
            SinkError::Unsupported(_) => "unsupported",
        }
    }

    fn for_good(error: &SinkError) -> bool {
        match error {
            SinkError::Publish { source, .. } => refused_for_good(source),
            SinkError::Unsupported(_) => false,
        }
    }
}
