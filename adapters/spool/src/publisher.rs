//! [`ReliablePublisher`]: a confirmed publisher that never drops a message
//! the broker could not take: it retries within a [`Budget`], then spools.

use std::time::Duration;

use backstop::Message;
use backstop::publish::Publisher;

use crate::outlet::PublisherOutlet;
use crate::running::{Running, Settings};
use crate::send::{SendError, Sent, with_stable_id};
use crate::{Budget, OpenError, RelayConfig, ReliableError, Spool, SpoolConfig, SpoolError};

/// Publishes through any confirmed [`Publisher`]; what the broker does not
/// confirm within the [`Budget`] goes to a durable local [`Spool`], and a
/// relay task delivers it once the broker is back.
///
/// [`publish`](ReliablePublisher::publish) resolves to
///
/// - [`Sent::Confirmed`]: the broker confirmed the message;
/// - [`Sent::Spooled`]: the broker could not be reached, did not confirm in
///   time, or refused it for now (a full queue, a negative confirm), after
///   retries with exponential backoff and full jitter; the message is
///   committed to the spool (on disk) before this returns;
/// - an error ([`ReliableError`]) only when retrying cannot help (the broker
///   said unroutable, missing destination, too large or invalid: fix the call) or the
///   spool itself refused (full, disk failure).
///
/// | The broker's answer | Publish | Relay |
/// |---|---|---|
/// | `Unavailable`, `Timeout`, no answer within the attempt timeout | retried, then spooled; later publishes go straight to the spool until the relay gets a confirm | backs off, then probes with the oldest record |
/// | `Nacked`, `Full` | retried, then spooled | the key waits, retried with backoff |
/// | `Unroutable`, `MissingDestination`, `TooLarge`, `Invalid` | returned, not spooled | the key waits, retried with backoff, logged as an error (the record can be dropped with [`Spool::remove`]) |
///
/// Every failure is logged (`tracing`) with the message id and the reason;
/// see [`metrics`](crate::metrics) for what is counted.
///
/// # Tracing
///
/// With the feature `otel`, each publish opens a producer span
/// (`backstop::otel::send_span`, a child of the current span) and the
/// message carries its W3C trace context (`traceparent`, replacing one it
/// had), also when it is spooled and relayed later; see `backstop::otel`.
///
/// # Order
///
/// Records are relayed in the order they were spooled. While a key (per
/// destination; messages without a key count as one key) has records in
/// the spool, new publishes of that key are spooled behind them instead of
/// overtaking them; the relay sends one key's records one at a time and
/// different keys concurrently. Once the broker was found unreachable, every
/// publish goes straight to the spool (no budget spent on a dead broker)
/// until the relay gets the next confirm.
///
/// # Delivery
///
/// At least once: a confirm lost on the way back, or a crash between the
/// confirm and the record's removal, sends a message again, with the same
/// message id (`x-backstop-message-id`) for consumers to deduplicate.
///
/// # Lifecycle
///
/// One process per spool (the lock file beside it). A restarted process
/// opening the same spool relays what the last one left. Cheap to clone;
/// the relay stops when the last clone is dropped or on
/// [`close`](ReliablePublisher::close).
pub struct ReliablePublisher<P> {
    running: Running<PublisherOutlet<P>>,
}

impl<P> Clone for ReliablePublisher<P> {
    fn clone(&self) -> Self {
        ReliablePublisher {
            running: self.running.clone(),
        }
    }
}

impl<P> std::fmt::Debug for ReliablePublisher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.running.debug("ReliablePublisher", f)
    }
}

impl<P: Publisher> ReliablePublisher<P> {
    /// A builder for a reliable publisher over `publisher`, spooling to `spool`.
    pub fn builder(publisher: P, spool: SpoolConfig) -> ReliablePublisherBuilder<P> {
        ReliablePublisherBuilder {
            publisher,
            settings: Settings::new(spool),
        }
    }

    /// Opens the spool with the default [`Budget`] and [`RelayConfig`] and
    /// starts the relay (which first delivers whatever the spool holds).
    pub async fn open(publisher: P, spool: SpoolConfig) -> Result<Self, OpenError> {
        Self::builder(publisher, spool).open().await
    }

    /// Publishes `message` to `destination`; see the [type docs](Self).
    pub async fn publish(
        &self,
        destination: &str,
        message: &Message,
    ) -> Result<Sent, ReliableError> {
        let message = with_stable_id(message);
        #[cfg(feature = "otel")]
        let (message, span) = traced(destination, message);
        let sending = self.running.path.send(Some(destination), &message);
        #[cfg(feature = "otel")]
        let sending = tracing::Instrument::instrument(sending, span);
        sending.await.map_err(|error| {
            let message_id = message.meta.message_id.clone();
            match error {
                SendError::Rejected(source) => ReliableError::Rejected {
                    message_id,
                    destination: destination.to_owned(),
                    source,
                },
                SendError::NotSpooled(source) => ReliableError::NotSpooled {
                    message_id,
                    destination: destination.to_owned(),
                    source,
                },
            }
        })
    }

    /// The spool (how many records wait, which ones).
    pub fn spool(&self) -> &Spool {
        &self.running.path.spool
    }

    /// The wrapped publisher.
    pub fn publisher(&self) -> &P {
        &self.running.path.outlet.0
    }

    /// The budget a publish spends on the broker before spooling.
    pub fn budget(&self) -> &Budget {
        &self.running.path.budget
    }

    /// True while the broker is known to be unreachable (publishes go
    /// straight to the spool until the relay gets a confirm).
    pub fn broker_unreachable(&self) -> bool {
        self.running.path.outage()
    }

    /// Waits until the relay has delivered everything in the spool, at most
    /// `timeout` ([`SpoolError::NotDrained`] says how many records remain).
    pub async fn flush(&self, timeout: Duration) -> Result<(), SpoolError> {
        self.running.flush(timeout).await
    }

    /// Stops the relay after its current round and closes the spool; what
    /// is left in it is delivered by the next process that opens it. Other
    /// clones fail with [`SpoolError::Closed`] from then on.
    pub async fn close(self) -> Result<(), SpoolError> {
        self.running.close().await
    }
}

/// Configures a [`ReliablePublisher`]; from [`ReliablePublisher::builder`].
#[derive(Debug)]
pub struct ReliablePublisherBuilder<P> {
    publisher: P,
    settings: Settings,
}

impl<P: Publisher> ReliablePublisherBuilder<P> {
    /// How hard a publish tries the broker before spooling (default [`Budget::default`]).
    #[must_use]
    pub fn budget(mut self, budget: Budget) -> Self {
        self.settings.budget = budget;
        self
    }

    /// How the relay drains the spool (default [`RelayConfig::default`]).
    #[must_use]
    pub fn relay(mut self, relay: RelayConfig) -> Self {
        self.settings.relay = relay;
        self
    }

    /// The broker client's own delivery timeout (Kafka:
    /// `KafkaPublisher::message_timeout()`); [`open`](Self::open) fails with
    /// [`OpenError::ClientTimeout`] if it is longer than one attempt. See [`Budget`].
    #[must_use]
    pub fn client_timeout(mut self, timeout: Duration) -> Self {
        self.settings.client_timeout = Some(timeout);
        self
    }

    /// Opens the spool and starts the relay.
    pub async fn open(self) -> Result<ReliablePublisher<P>, OpenError> {
        let running = Running::open(PublisherOutlet(self.publisher), self.settings).await?;
        Ok(ReliablePublisher { running })
    }
}

/// `message` carrying the context of a new producer span, and the span.
#[cfg(feature = "otel")]
fn traced<'a>(
    destination: &str,
    message: std::borrow::Cow<'a, Message>,
) -> (std::borrow::Cow<'a, Message>, tracing::Span) {
    let span = backstop::otel::send_span(destination, &message);
    let mut message = message;
    backstop::otel::inject_span(&span, &mut message.to_mut().headers);
    (message, span)
}
