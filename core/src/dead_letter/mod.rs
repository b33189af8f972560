//! Dead-lettering: a message that failed for good is written to the DLQ, and
//! only a write the broker confirmed yields [`Outcome::DeadLettered`].
//!
//! If the sink fails, the error is [`Error::DeadLetter`]: the ack layer leaves
//! the source unacked and it is redelivered after a backoff. The redelivery
//! retries only the write, with the failure it was going to carry (kind,
//! error text, attempts): the handler does not run again (see
//! *Pending letters* below).
//!
//! A write that can never succeed ([`SinkError::is_permanent`](crate::error::SinkError::is_permanent):
//! too large, unroutable, a missing destination, not authorised) is not
//! retried forever: the error says so ([`Error::is_unwritable_letter`]) and
//! the [`Runner`](crate::runner::Runner) stops consuming its source, reports not
//! ready, and never acks the message without its letter.
//!
//! # Pending letters
//!
//! A letter whose write failed is remembered until a redelivery writes it,
//! in two places:
//!
//! - **The idempotency store**, for a message with a key under an
//!   [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer): the layer
//!   records the failure under the key's lease
//!   ([`Store::release_with_letter`](crate::idempotency::Store::release_with_letter)), and the next
//!   claim of the key reports it
//!   ([`Claim::LetterPending`](crate::idempotency::Claim::LetterPending)),
//!   which reaches this service as a [`PendingLetter`] extension. With a
//!   shared durable store (Redis, PostgreSQL) this holds on any worker and
//!   after restarts: the redelivery writes only the letter, with the
//!   original kind, error text (cut to 1 KiB), attempts and failure times.
//! - **This process**, keyed by the message's identity (the queue or topic
//!   it was consumed from, its message id, its redrive number, its length):
//!   the fallback without a store, or with a store that keeps no pending
//!   letters. Kafka redelivers a nacked record to the same process and
//!   RabbitMQ usually to the same consumer; a redelivery that reaches
//!   another process, or comes after a restart, finds nothing here and runs
//!   the handler again (with a shared store, as its next counted attempt).
//!   At most 10,000 letters are remembered; past that the oldest is
//!   forgotten.

mod layer;
mod pending;
mod sink;

pub use self::layer::DeadLetterLayer;
pub use self::pending::PendingLetter;
pub use self::sink::DeadLetterSink;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tower::Service;

use self::pending::PendingLetters;
use crate::at_once::{self, AtOnce};
use crate::copy;
use crate::error::{Error, Failure};
use crate::expiry::{OnExpiry, TimeToLive};
use crate::message::Message;
use crate::outcome::Outcome;
use crate::request::Request;
use crate::transaction::InTransaction;

/// The DLQ of a queue, on a broker of queues (RabbitMQ, the in-memory
/// broker): `<queue>.dlq`.
///
/// ```
/// assert_eq!(backstop::dead_letter::dlq_name("orders"), "orders.dlq");
/// ```
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The dead-letter service; see the [module docs](self).
#[derive(Clone)]
pub struct DeadLetter<S> {
    inner: S,
    writer: Writer,
}

impl<S> std::fmt::Debug for DeadLetter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("destination", &self.writer.destination)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Request<T>> for DeadLetter<S>
where
    S: Service<Request<T>, Response = Outcome, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let message = Arc::clone(request.message_arc());
        let transaction = request.extensions.get::<InTransaction>().cloned();
        let writer = self.writer.clone();
        if let Some(failure) = writer.pending_for(&request) {
            return Box::pin(
                async move { writer.write(&message, transaction.as_ref(), failure).await },
            );
        }
        if let Some(failure) = writer.expired(&request) {
            return Box::pin(async move {
                writer.expire(&message, transaction.as_ref(), failure).await
            });
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            writer
                .after(&message, transaction.as_ref(), future.await)
                .await
        })
    }
}

/// Writes letters and keeps the pending table true; shared by
/// [`DeadLetter`] and the stack's pipeline.
#[derive(Clone)]
pub(crate) struct Writer {
    sink: Arc<dyn DeadLetterSink>,
    destination: Option<Arc<str>>,
    pending: Arc<PendingLetters>,
    expiry: Option<TimeToLive>,
}

impl Writer {
    /// Writes letters to `sink` (at the sink's default destination).
    pub(crate) fn new(sink: Arc<dyn DeadLetterSink>) -> Self {
        Writer {
            sink,
            destination: None,
            pending: Arc::default(),
            expiry: None,
        }
    }

    /// Expired messages are not run (see [`expiry`](crate::expiry)).
    pub(crate) fn expire_after(mut self, ttl: TimeToLive) -> Self {
        self.expiry = Some(ttl);
        self
    }

    /// The failure of a message that expired before it ran, if it did
    /// (only with a [`TimeToLive`]): then it is settled without running.
    pub(crate) fn expired<T>(&self, request: &Request<T>) -> Option<Failure> {
        let ttl = self.expiry.as_ref()?;
        let now = SystemTime::now();
        let reason = ttl.expired(request.message(), now)?;
        Some(TimeToLive::failure(reason, request.attempt(), now))
    }

    /// Settles an expired message as its [`TimeToLive`] says: its letter
    /// written, or acked unrun and counted.
    pub(crate) async fn expire(
        &self,
        message: &Message,
        transaction: Option<&InTransaction>,
        failure: Failure,
    ) -> Result<Outcome, Error> {
        match self.expiry.map(|ttl| ttl.on_expiry()) {
            Some(OnExpiry::Discard) => {
                tracing::info!(
                    message_id = %message.meta.message_id,
                    source = %message.meta.source,
                    reason = %failure.message,
                    "expired message discarded without running"
                );
                Ok(Outcome::Discarded { kind: failure.kind })
            }
            _ => self.write(message, transaction, failure).await,
        }
    }

    /// Writes letters to `destination` instead.
    pub(crate) fn to(mut self, destination: Arc<str>) -> Self {
        self.destination = Some(destination);
        self
    }

    /// The failure whose letter is still to be written for `request` (a
    /// redelivery after a failed write), if any: then only the write runs,
    /// not the handler.
    pub(crate) fn pending_for<T>(&self, request: &Request<T>) -> Option<Failure> {
        let message = request.message();
        let recorded = request
            .extensions
            .get::<PendingLetter>()
            .map(|PendingLetter(failure)| failure.clone());
        let failure = recorded.or_else(|| self.pending.get(message))?;
        tracing::info!(
            message_id = %message.meta.message_id,
            kind = %failure.kind,
            "retrying the dead-letter write of a redelivered message without running it"
        );
        Some(failure)
    }

    /// Writes the letter of a run that failed for good; passes any other
    /// result through.
    ///
    /// Any other result passes through without a future of its own; the
    /// write's future is boxed, so the caller's future is no bigger for
    /// the rare path.
    pub(crate) fn after<'s>(
        &'s self,
        message: &'s Message,
        transaction: Option<&'s InTransaction>,
        result: Result<Outcome, Error>,
    ) -> AtOnce<'s, Result<Outcome, Error>> {
        match result {
            Err(Error::Failed(failure)) => {
                at_once::later(self.write(message, transaction, failure))
            }
            other => at_once::now(other),
        }
    }

    /// Writes one letter (into `transaction` if the delivery is in one).
    pub(crate) async fn write(
        &self,
        message: &Message,
        transaction: Option<&InTransaction>,
        failure: Failure,
    ) -> Result<Outcome, Error> {
        let letter = copy::dead_letter(message, &failure);
        let destination = self.destination.as_deref();
        let written = match transaction {
            Some(transaction) => {
                self.sink
                    .dead_letter_in(letter, destination, transaction)
                    .await
            }
            None => self.sink.dead_letter(letter, destination).await,
        };
        if let Err(source) = written {
            self.pending.remember(message, &failure);
            if source.is_permanent() {
                tracing::error!(
                    message_id = %message.meta.message_id,
                    source = %message.meta.source,
                    kind = %failure.kind,
                    error = %source,
                    "the dead letter can never be written as it is; the message stays on its source"
                );
            }
            return Err(Error::DeadLetter {
                source,
                failure: Box::new(failure),
            });
        }
        self.pending.forget(message);
        crate::lifecycle::dead_lettered(&message.meta, failure.attempts, failure.kind);
        tracing::warn!(
            message_id = %message.meta.message_id,
            source = %message.meta.source,
            kind = %failure.kind,
            attempts = failure.attempts,
            error = %failure.message,
            "message dead-lettered"
        );
        Ok(Outcome::DeadLettered { kind: failure.kind })
    }
}

#[cfg(test)]
mod tests;
