//! The stack's one per-message future: every layer's logic, in the stack's
//! order, as plain async code over configuration borrowed from one shared
//! [`Pipeline`]. No layer boxes its future or clones the layers inside it;
//! the tower layers ([`Ack`](crate::ack::Ack), [`Retry`](crate::retry::Retry),
//! …) call the same functions, so there is one implementation of each
//! layer's logic.

use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use tower::{Service, ServiceExt};

use super::{AttemptService, MessageService};
use crate::ack::Settled;
use crate::ack::{self, Start};
use crate::dead_letter::Writer;
use crate::delivery::Delivery;
use crate::error::{AckError, Error, HandlerError};
use crate::handler::Handle;
use crate::idempotency::Deduper;
use crate::metrics::{MessageKeys, Observation};
use crate::outcome::Outcome;
use crate::payload::Payload;
use crate::request::Request;
use crate::retry::{self, RetryPolicy, RetrySink};
use crate::transaction::InTransaction;
use crate::{catch_panic, decode, handler, timeout};

/// Everything a message's run reads, built once per stack.
pub(super) struct Pipeline<T, H> {
    /// The user's layer around each message, holding [`Rest`] (the
    /// dead-letter layer inward) as its inner service.
    pub(super) around_message: Option<MessageService<T>>,
    pub(super) nack_delay: Duration,
    pub(super) postpone: Option<Arc<dyn RetrySink>>,
    pub(super) max_payload: Option<usize>,
    pub(super) deduper: Option<Deduper>,
    pub(super) letters: Writer,
    pub(super) policy: RetryPolicy,
    pub(super) retry_sink: Option<Arc<dyn RetrySink>>,
    pub(super) timeout: Option<Duration>,
    pub(super) keys: MessageKeys,
    pub(super) attempt: Attempt<T, H>,
}

/// What one attempt calls.
pub(super) enum Attempt<T, H> {
    /// The handler, directly.
    Handler(H),
    /// The handler inside the user's innermost wrapper (a tower service;
    /// it costs its own future).
    Wrapped(AttemptService<T>),
}

impl<T: Payload, H: Handle<T>> Pipeline<T, H> {
    /// Ack ⟶ decode ⟶ metrics/trace ⟶ idempotency ⟶ dead-letter ⟶ retry
    /// ⟶ timeout ⟶ catch-panic ⟶ handler, for one delivery.
    ///
    /// The delivery is taken apart here; the future decodes it, holds the
    /// request once and lends it to each step (`&mut`): a step's future
    /// holds a reference, not a copy, so the message's future stays small.
    /// Rare paths (postponing, a letter's write, a retry's wait) are boxed
    /// where they start.
    pub(super) fn run(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> impl Future<Output = Result<Settled, AckError>> + Send + 'static {
        match ack::start(delivery, self.postpone.as_ref(), self.nack_delay) {
            Start::Postpone(postponing) => Either::Left(Box::pin(postponing.settle())),
            // Decoding runs the user's `Payload` code, so it runs inside
            // the future: a panic in it is caught for this message alone
            // (the runner's slot), not in `Stack::call`.
            Start::Run(received, running) => Either::Right(async move {
                let mut request = decode::request::<T>(received, self.max_payload);
                running.finish(|| self.observed(&mut request)).await
            }),
        }
    }

    fn observed<'a>(
        &'a self,
        request: &'a mut Request<T>,
    ) -> impl Future<Output = Result<Outcome, Error>> + 'a {
        Observation::start(request, &self.keys).observe(move || self.deduplicated(request))
    }

    async fn deduplicated(&self, request: &mut Request<T>) -> Result<Outcome, Error> {
        match &self.deduper {
            Some(deduper) => deduper.run(request, |r| self.dead_lettered(r)).await,
            None => self.dead_lettered(request).await,
        }
    }

    async fn dead_lettered(&self, request: &mut Request<T>) -> Result<Outcome, Error> {
        let message = Arc::clone(request.message_arc());
        let transaction = request.extensions.get::<InTransaction>().cloned();
        let transaction = transaction.as_ref();
        if let Some(failure) = self.letters.pending_for(request) {
            // Rare: boxed, so the message's future is no bigger for it.
            return Box::pin(self.letters.write(&message, transaction, failure)).await;
        }
        if let Some(failure) = self.letters.expired(request) {
            return Box::pin(self.letters.expire(&message, transaction, failure)).await;
        }
        // Through the user's layer around each message, if any (a tower
        // service: it takes the request; nothing reads it here after).
        let result = match &self.around_message {
            Some(service) => service.clone().oneshot(request.take()).await,
            None => self.retried(request).await,
        };
        self.letters.after(&message, transaction, result).await
    }

    async fn retried(&self, request: &mut Request<T>) -> Result<Outcome, Error> {
        let mut retrying = retry::Retrying::start(&self.policy, self.retry_sink.as_ref(), request)?;
        loop {
            let result = self.attempt(request).await;
            if let Some(end) = retrying.after(request, result).await {
                return end;
            }
        }
    }

    async fn attempt(&self, request: &mut Request<T>) -> Result<(), HandlerError> {
        match &self.attempt {
            Attempt::Handler(handler) => {
                timeout::within(
                    self.timeout,
                    catch_panic::caught(handler::run(handler, request)),
                )
                .await
            }
            Attempt::Wrapped(service) => {
                // Readiness outside the timeout, as a layered stack waits
                // for it; the call and its future inside catch-panic.
                let mut service = service.clone();
                service.ready().await?;
                timeout::within(
                    self.timeout,
                    catch_panic::caught_call(|| service.call(request.clone())),
                )
                .await
            }
        }
    }
}

/// The stack inward of a user's [`around_message`](super::StackBuilder::around_message)
/// layer (retries and the attempts), as a service over the pipeline that
/// holds the layer.
pub(super) struct Rest<T, H>(pub(super) std::sync::Weak<Pipeline<T, H>>);

impl<T, H> Clone for Rest<T, H> {
    fn clone(&self) -> Self {
        Rest(self.0.clone())
    }
}

impl<T: Payload, H: Handle<T>> Service<Request<T>> for Rest<T, H> {
    type Response = Outcome;
    type Error = Error;
    type Future = futures::future::BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let pipeline = self.0.upgrade();
        Box::pin(async move {
            match pipeline {
                Some(pipeline) => {
                    let mut request = request;
                    pipeline.retried(&mut request).await
                }
                // The stack was dropped while a message was in its layer.
                None => Err(Error::Shutdown),
            }
        })
    }
}
