//! [`SpoolingDeadLetterSink`]: an opt-in DLQ writer that spools a dead
//! letter when the DLQ broker is down, so the source can be acked.
//!
//! See the type for the trade-off against the default.

use std::time::Duration;

use backstop::Message;
use backstop::dead_letter::DeadLetterSink;
use backstop::error::SinkError;
use backstop::publish::PublishError;

use crate::outlet::SinkOutlet;
use crate::running::{Running, Settings};
use crate::send::SendError;
use crate::{Budget, OpenError, RelayConfig, Spool, SpoolConfig, SpoolError};

/// Wraps an adapter's [`DeadLetterSink`] with a spool: opt-in, for a
/// consumer whose source must move on while the DLQ broker is down.
///
/// A letter is first written through the inner sink within the
/// [`Budget`]; if the broker does not confirm it (unreachable, no confirm,
/// refused for now), it is spooled and `dead_letter` returns `Ok`, so the
/// stack acks the source. A relay delivers spooled letters through the
/// inner sink (which routes them as it always does) once the broker is
/// back, in order per DLQ and key. A sink error that retrying cannot fix
/// ([`SinkError::is_permanent`]: too large, unroutable, a missing
/// destination, not authorised) and a spool that cannot take the letter
/// are returned, so the source stays unacked (a permanent one halts the
/// [`Runner`](backstop::Runner)).
///
/// # The trade-off
///
/// The default (an adapter's sink alone) keeps the source message unacked
/// until the broker confirmed the DLQ write: while the DLQ broker is down
/// the failed message stays on its source and is redelivered, failing again
/// each time. Nothing lives outside the broker's replicated storage, but the
/// source backs up with messages that cannot finish.
///
/// This sink acks the source once the letter is either confirmed by the
/// broker or committed to the local spool (`synchronous=FULL`). The source
/// moves on; the letter reaches the DLQ when the broker is back. The price:
/// until then the letter's only copy is one file on this machine's disk
/// (lost with the disk, or with a container's ephemeral volume), and the
/// DLQ shows it late. It is durable only on persistent storage: use it
/// where the spool sits on a disk that outlives the process and its
/// container.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use backstop::StackBuilder;
/// use backstop_rabbitmq::RabbitMq;
/// use backstop_spool::{SpoolConfig, SpoolingDeadLetterSink};
///
/// let rabbit = RabbitMq::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let dlq = SpoolingDeadLetterSink::open(
///     rabbit.dead_letter_sink(),
///     SpoolConfig::new("/var/lib/orders-worker/dlq.spool"),
/// )
/// .await?;
/// let stack = StackBuilder::<String>::new(Arc::new(dlq));
/// # Ok(()) }
/// ```
pub struct SpoolingDeadLetterSink<S> {
    running: Running<SinkOutlet<S>>,
}

impl<S> Clone for SpoolingDeadLetterSink<S> {
    fn clone(&self) -> Self {
        SpoolingDeadLetterSink {
            running: self.running.clone(),
        }
    }
}

impl<S> std::fmt::Debug for SpoolingDeadLetterSink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.running.debug("SpoolingDeadLetterSink", f)
    }
}

impl<S: DeadLetterSink> SpoolingDeadLetterSink<S> {
    /// A builder for a spooling sink over `sink`, spooling to `spool`.
    pub fn builder(sink: S, spool: SpoolConfig) -> SpoolingDeadLetterSinkBuilder<S> {
        SpoolingDeadLetterSinkBuilder {
            sink,
            settings: Settings::new(spool),
        }
    }

    /// Opens the spool with the default [`Budget`] and [`RelayConfig`] and starts the relay.
    pub async fn open(sink: S, spool: SpoolConfig) -> Result<Self, OpenError> {
        Self::builder(sink, spool).open().await
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.running.path.spool
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.running.path.outlet.0
    }

    /// Waits until every spooled letter reached the DLQ, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), SpoolError> {
        self.running.flush(timeout).await
    }

    /// Stops the relay and closes the spool; what is left is delivered by
    /// the next process that opens it.
    pub async fn close(self) -> Result<(), SpoolError> {
        self.running.close().await
    }
}

#[async_trait::async_trait]
impl<S: DeadLetterSink> DeadLetterSink for SpoolingDeadLetterSink<S> {
    /// Confirmed by the broker, or committed to the spool; see the [type docs](Self).
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        match self.running.path.send(destination, &letter).await {
            Ok(_sent) => Ok(()),
            Err(SendError::Rejected(error)) => Err(error),
            Err(SendError::NotSpooled(error)) => Err(SinkError::Publish {
                destination: destination.unwrap_or("<dead-letter queue>").to_owned(),
                source: PublishError::Unavailable(Box::new(error)),
            }),
        }
    }
}

/// Configures a [`SpoolingDeadLetterSink`]; from [`SpoolingDeadLetterSink::builder`].
#[derive(Debug)]
pub struct SpoolingDeadLetterSinkBuilder<S> {
    sink: S,
    settings: Settings,
}

impl<S: DeadLetterSink> SpoolingDeadLetterSinkBuilder<S> {
    /// How hard a letter tries the broker before spooling (default [`Budget::default`]).
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

    /// The broker client's own delivery timeout; see [`Budget`].
    #[must_use]
    pub fn client_timeout(mut self, timeout: Duration) -> Self {
        self.settings.client_timeout = Some(timeout);
        self
    }

    /// Opens the spool and starts the relay.
    pub async fn open(self) -> Result<SpoolingDeadLetterSink<S>, OpenError> {
        let running = Running::open(SinkOutlet(self.sink), self.settings).await?;
        Ok(SpoolingDeadLetterSink { running })
    }
}
