//! [`StackBuilder`]: composes the layers in the one correct order.
//!
//! Outermost first: ack ⟶ decode ⟶ metrics/trace ⟶
//! idempotency ⟶ dead-letter (and time to live) ⟶ retry ⟶ timeout ⟶
//! catch-panic ⟶ handler.
//!
//! Why this order: the ack must see every result; decoding happens once
//! before anything needs the key; idempotency wraps the dead-letter write so
//! a key is marked `dead_lettered` only after the DLQ confirmed it; the
//! dead-letter layer sees only final failures (the retry layer inside it
//! used up the attempts); the timeout is per attempt; a panic is caught
//! innermost so every layer sees it as a permanent failure.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

mod pipeline;
mod recycled;

use self::pipeline::{Attempt, Pipeline};
pub use self::recycled::StackFuture;
use self::recycled::{Boxed, Recycler};
use crate::ack::Settled;
use crate::dead_letter::{DeadLetterSink, Writer};
use crate::delivery::Delivery;
use crate::error::{AckError, Error, HandlerError};
use crate::handler::Handle;
use crate::handler::HandlerService;
use crate::idempotency::{self, Deduper, KeySource, Store};
use crate::outcome::Outcome;
use crate::payload::Payload;
use crate::request::Request;
use crate::retry::{RetryPolicy, RetrySink};

/// One attempt's service, as a layer added with
/// [`StackBuilder::around_attempt`] sees it (the boxed handler).
pub type AttemptService<T> = BoxCloneSyncService<Request<T>, (), HandlerError>;

/// One message's service, as a layer added with
/// [`StackBuilder::around_message`] sees it: its retries and attempts. It
/// answers with the message's [`Outcome`], or an [`Error`]: a final
/// failure ([`Error::Failed`]) is dead-lettered, any other leaves the
/// message unacked (nacked or postponed).
pub type MessageService<T> = BoxCloneSyncService<Request<T>, Outcome, Error>;

type Wrap<T> = Arc<dyn Fn(AttemptService<T>) -> AttemptService<T> + Send + Sync>;
type WrapMessage<T> = Arc<dyn Fn(MessageService<T>) -> MessageService<T> + Send + Sync>;

/// A fully configured stack: takes a [`Delivery`], settles it, says how.
///
/// Each delivery runs as one future over the stack's shared configuration
/// (see `pipeline`): cloning a `Stack` is a reference count.
#[derive(Clone)]
pub struct Stack {
    inner: Arc<dyn Process>,
    recycler: Arc<Recycler>,
}

/// A built pipeline, its payload and handler types erased.
trait Process: Send + Sync + 'static {
    /// The future of `delivery`, written into `recycled` (a finished
    /// future's box) when given.
    fn process(self: Arc<Self>, delivery: Delivery, recycled: Option<Boxed>) -> Boxed;
}

impl<T: Payload, H: Handle<T>> Process for Pipeline<T, H> {
    fn process(self: Arc<Self>, delivery: Delivery, recycled: Option<Boxed>) -> Boxed {
        recycled::place(recycled, delivery, || {
            move |delivery| Arc::clone(&self).run(delivery)
        })
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Service<Delivery> for Stack {
    type Response = Settled;
    type Error = AckError;
    type Future = StackFuture;

    /// Always ready: a user's innermost wrapper is made ready per attempt.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), AckError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let boxed = Arc::clone(&self.inner).process(delivery, self.recycler.take());
        StackFuture::new(boxed, Arc::clone(&self.recycler))
    }
}

/// Builds a [`Stack`] for payload type `T`; see the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use backstop::idempotency::MemoryStore;
/// use backstop::memory::MemoryBroker;
/// use backstop::{Context, HandlerError, KeySource, Message, RetryPolicy, Runner, StackBuilder, handler_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// for id in ["a", "b", "a"] {
///     broker.publish_now("orders", Message::new(format!("\"{id}\"")).with_message_id(id))?;
/// }
///
/// let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
///     .retry(RetryPolicy::retries(2).backoff(Duration::from_millis(1), Duration::from_millis(5)))
///     .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
///     .timeout(Duration::from_secs(5))
///     .build(handler_fn(|_order: String, _ctx: Context| async { Ok::<_, HandlerError>(()) }));
///
/// let summary = Runner::new(broker.consume("orders", 4).until_drained(), stack)
///     .concurrency(1)
///     .run()
///     .await?;
/// assert_eq!((summary.handled, summary.duplicates), (2, 1));
/// # Ok(())
/// # }
/// ```
pub struct StackBuilder<T> {
    retry: RetryPolicy,
    timeout: Option<Duration>,
    store: Option<(Arc<dyn Store>, idempotency::Config)>,
    dead_letter: Arc<dyn DeadLetterSink>,
    dead_letter_to: Option<Arc<str>>,
    retry_sink: Option<Arc<dyn RetrySink>>,
    postpone: Option<Arc<dyn RetrySink>>,
    nack_delay: Duration,
    max_payload: Option<usize>,
    innermost: Option<Wrap<T>>,
    around_message: Option<WrapMessage<T>>,
    time_to_live: Option<crate::expiry::TimeToLive>,
    labels: crate::metrics::MetricLabels,
    _payload: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for StackBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackBuilder")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("idempotency", &self.store.as_ref().map(|(_, c)| c))
            .field("dead_letter_to", &self.dead_letter_to)
            .field("retry_sink", &self.retry_sink.is_some())
            .field("postpone", &self.postpone.is_some())
            .field("nack_delay", &self.nack_delay)
            .field("max_payload", &self.max_payload)
            .field("time_to_live", &self.time_to_live)
            .field("around_attempt", &self.innermost.is_some())
            .field("around_message", &self.around_message.is_some())
            .field("labels", &self.labels)
            .finish()
    }
}

impl<T: Payload> StackBuilder<T> {
    /// A builder whose dead letters go to `dead_letter` (required: nothing is dropped).
    ///
    /// Defaults: 5 attempts (100 ms … 10 s backoff), no timeout, no
    /// deduplication, nacks after about 1 s, the payload type's DLQ default.
    pub fn new(dead_letter: Arc<dyn DeadLetterSink>) -> Self {
        StackBuilder {
            retry: RetryPolicy::default(),
            timeout: None,
            store: None,
            dead_letter,
            dead_letter_to: T::default_dlq().map(Arc::from),
            retry_sink: None,
            postpone: None,
            nack_delay: Duration::from_secs(1),
            max_payload: None,
            innermost: None,
            around_message: None,
            time_to_live: None,
            labels: crate::metrics::MetricLabels::default(),
            _payload: PhantomData,
        }
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Overrides what `settings` sets (attempts, backoff, timeout, payload
    /// limit, time to live) and keeps the rest as configured so far; concurrency is the
    /// runner's ([`Settings::concurrency_or`](crate::settings::Settings::concurrency_or)).
    #[must_use]
    pub fn settings(mut self, settings: &crate::settings::Settings) -> Self {
        if let Some(n) = settings.max_attempts {
            self.retry.max_attempts = n.max(1);
        }
        if let Some(initial) = settings.backoff_initial {
            self.retry.initial = initial;
        }
        if let Some(max) = settings.backoff_max {
            self.retry.max_delay = max;
        }
        if let Some(timeout) = settings.timeout {
            self.timeout = Some(timeout);
        }
        if let Some(bytes) = settings.max_payload_bytes {
            self.max_payload = Some(bytes);
        }
        if let Some(ttl) = settings.time_to_live {
            self.time_to_live = Some(ttl);
        }
        self
    }

    /// Labels this stack's metrics with its consumer's `source` and `group`
    /// (see [`MetricLabels`](crate::metrics::MetricLabels); each source type
    /// has a `metric_labels()`). Install the metrics recorder first.
    #[must_use]
    pub fn metric_labels(mut self, labels: crate::metrics::MetricLabels) -> Self {
        self.labels = labels;
        self
    }

    /// Hands retry delays longer than the policy's in-process limit to `sink`.
    #[must_use]
    pub fn retry_sink(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.retry_sink = Some(sink);
        self
    }

    /// Postpones what spends no attempt (a store or dependency outage, a
    /// key busy elsewhere, a delivery at its unacked-time budget) through
    /// `sink` instead of nacking it: a confirmed copy with the same attempt
    /// count to the delay queue, then an ack (see [`ack`](crate::ack)). For
    /// RabbitMQ quorum queues, where every requeue spends the delivery
    /// count, pass the RabbitMQ retry sink; where the sink refuses (a
    /// classic queue) the message is nacked as without it. Kafka keeps its
    /// nack (the consumer hands the message out again; nothing is spent).
    #[must_use]
    pub fn postpone_through(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.postpone = Some(sink);
        self
    }

    /// Each attempt may run at most `timeout` (then it fails transiently, kind `timeout`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Deduplicates through `store`, keys from `key`. A remote store's
    /// calls ([`Store::remote`]: Redis, PostgreSQL) are batched across the
    /// messages in flight ([`Batched`](crate::idempotency::Batched)); turn
    /// that off with [`idempotency_with`](Self::idempotency_with) and
    /// [`Config::unbatched`](idempotency::Config::unbatched).
    #[must_use]
    pub fn idempotency(mut self, store: Arc<dyn Store>, key: KeySource) -> Self {
        self.store = Some((store, idempotency::Config::keyed_by(key)));
        self
    }

    /// Deduplicates through `store` with a full config (lease, worker name).
    #[must_use]
    pub fn idempotency_with(mut self, store: Arc<dyn Store>, config: idempotency::Config) -> Self {
        self.store = Some((store, config));
        self
    }

    /// Dead-letters to `destination` instead of the sink's default.
    #[must_use]
    pub fn dead_letter_to(mut self, destination: impl Into<Arc<str>>) -> Self {
        self.dead_letter_to = Some(destination.into());
        self
    }

    /// Waits about `delay` before nacking a message that could not be settled.
    #[must_use]
    pub fn nack_delay(mut self, delay: Duration) -> Self {
        self.nack_delay = delay;
        self
    }

    /// Does not run messages older than `ttl` allows or past their
    /// [`EXPIRES_AT`](crate::wire::EXPIRES_AT) header: they are
    /// dead-lettered with kind `expired`, or discarded and counted; see
    /// [`expiry`](crate::expiry). Off by default (nothing expires).
    #[must_use]
    pub fn time_to_live(mut self, ttl: crate::expiry::TimeToLive) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Dead-letters bodies over `bytes` with kind `too_large`, unread.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Wraps each attempt of the handler in the user's tower `layer`,
    /// inside the timeout and catch-panic (so the timeout bounds the layer
    /// too, and a panic in it is caught): a per-attempt metric, a
    /// transaction per attempt (the PostgreSQL transactional inbox goes
    /// here), a concurrency limit on the handler. An error the layer
    /// returns is the attempt's verdict (transient ones are retried).
    ///
    /// The layer's service is built once and cloned per attempt; state
    /// that must be shared across messages (a rate limiter's bucket) lives
    /// behind an `Arc` in the layer, or behind a `tower::buffer::Buffer`.
    /// A second call replaces the first layer (compose several with
    /// `tower::ServiceBuilder` into one).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use backstop::stack::AttemptService;
    /// use backstop::{Context, HandlerError, StackBuilder, handler_fn, memory::MemoryBroker};
    /// use tower::{ServiceExt, layer::layer_fn};
    ///
    /// let attempts = Arc::new(AtomicU64::new(0));
    /// let counted = Arc::clone(&attempts);
    /// let broker = MemoryBroker::new();
    /// let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
    ///     .around_attempt(layer_fn(move |inner: AttemptService<String>| {
    ///         let counted = Arc::clone(&counted);
    ///         AttemptService::new(inner.map_request(move |r| {
    ///             counted.fetch_add(1, Ordering::Relaxed);
    ///             r
    ///         }))
    ///     }))
    ///     .build(handler_fn(|_: String, _: Context| async { Ok::<_, HandlerError>(()) }));
    /// # let _ = stack;
    /// ```
    #[must_use]
    pub fn around_attempt<L>(mut self, layer: L) -> Self
    where
        L: Layer<AttemptService<T>> + Send + Sync + 'static,
        L::Service: Service<Request<T>, Response = (), Error = HandlerError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<T>>>::Future: Send + 'static,
    {
        self.innermost = Some(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }

    /// The former name of [`around_attempt`](Self::around_attempt).
    #[deprecated(note = "renamed `around_attempt`")]
    #[must_use]
    pub fn innermost<L>(self, layer: L) -> Self
    where
        L: Layer<AttemptService<T>> + Send + Sync + 'static,
        L::Service: Service<Request<T>, Response = (), Error = HandlerError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<T>>>::Future: Send + 'static,
    {
        self.around_attempt(layer)
    }

    /// Wraps each message in the user's tower `layer` once, inside
    /// idempotency and dead-lettering (after its key was claimed, so a
    /// duplicate never reaches it; after a pending dead letter or an
    /// expired message was settled, so neither reaches it) and outside the
    /// retries: a rate limit on messages, a filter, a per-message metric.
    /// The layer sees a [`MessageService`]: it may answer without calling
    /// it (a filter returning [`Outcome::Discarded`]: the key is then
    /// settled and the message acked); an [`Error::Failed`] it returns is
    /// dead-lettered, any other [`Error`] leaves the message unacked for a
    /// later delivery.
    ///
    /// The layer's service is built once per stack and cloned per message,
    /// so state shared across the messages in flight lives behind an `Arc`
    /// in the layer (a `governor` limiter, say); a per-clone limiter such
    /// as tower's `RateLimit` would limit each message alone, nothing in
    /// all. A message waiting in the layer holds its key's lease and its
    /// place in the broker's unacked window (RabbitMQ's unacked-time
    /// budget runs), and the runner keeps taking deliveries up to its
    /// concurrency. Without a layer here, nothing is boxed or allocated
    /// for it. A second call replaces the first layer (compose several
    /// with `tower::ServiceBuilder` into one).
    #[must_use]
    pub fn around_message<L>(mut self, layer: L) -> Self
    where
        L: Layer<MessageService<T>> + Send + Sync + 'static,
        L::Service:
            Service<Request<T>, Response = Outcome, Error = Error> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<T>>>::Future: Send + 'static,
    {
        self.around_message = Some(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }

    /// Builds the stack around a handler of several messages at once: each
    /// message still runs through the whole stack on its own, and its
    /// attempt joins a batch as `config` says; see [`batch`](crate::batch).
    /// Run it with a concurrency of at least `config.max()`.
    pub fn build_batched<H: crate::batch::HandleBatch<T>>(
        self,
        handler: H,
        config: crate::batch::BatchConfig,
    ) -> Stack {
        self.build(crate::batch::Batcher::new(handler, config))
    }

    /// Builds the stack around `handler`.
    pub fn build<H: Handle<T>>(self, handler: H) -> Stack {
        crate::metrics::describe();
        // Without an innermost wrapper the handler is called directly.
        let attempt = match &self.innermost {
            Some(wrap) => Attempt::Wrapped(wrap(BoxCloneSyncService::new(
                HandlerService::<H, T>::new(handler),
            ))),
            None => Attempt::Handler(handler),
        };
        let mut letters = Writer::new(self.dead_letter);
        if let Some(to) = self.dead_letter_to {
            letters = letters.to(to);
        }
        if let Some(ttl) = self.time_to_live {
            letters = letters.expire_after(ttl);
        }
        let around_message = self.around_message;
        let pipeline = |message: Option<MessageService<T>>| Pipeline {
            around_message: message,
            nack_delay: self.nack_delay,
            postpone: self.postpone,
            max_payload: self.max_payload,
            deduper: self
                .store
                .map(|(store, config)| Deduper::labelled(store, config, &self.labels)),
            letters,
            policy: self.retry,
            retry_sink: self.retry_sink,
            timeout: self.timeout,
            keys: crate::metrics::MessageKeys::new(&self.labels),
            attempt,
        };
        let inner: Arc<dyn Process> = match around_message {
            // The user's layer calls back into the pipeline that holds it:
            // through a weak reference, so the two do not keep each other.
            Some(wrap) => Arc::new_cyclic(|me: &std::sync::Weak<Pipeline<T, H>>| {
                pipeline(Some(wrap(BoxCloneSyncService::new(pipeline::Rest(
                    me.clone(),
                )))))
            }),
            None => Arc::new(pipeline(None)),
        };
        Stack {
            inner,
            recycler: Arc::default(),
        }
    }
}

#[cfg(test)]
impl<T: Payload> StackBuilder<T> {
    /// The same stack composed of the public tower layers, one boxed
    /// service per boundary: the stack's tests run against both, so the
    /// layers and the pipeline cannot drift apart.
    pub(crate) fn build_layered<H: Handle<T>>(self, handler: H) -> Stack {
        use tower::ServiceBuilder;
        use tower::util::BoxCloneSyncService as Boxed;

        use crate::ack::AckLayer;
        use crate::catch_panic::CatchPanicLayer;
        use crate::dead_letter::DeadLetterLayer;
        use crate::decode::DecodeLayer;
        use crate::idempotency::IdempotencyLayer;
        use crate::metrics::MetricsLayer;
        use crate::retry::RetryLayer;
        use crate::timeout::TimeoutLayer;

        let handler: AttemptService<T> = Boxed::new(HandlerService::<H, T>::new(handler));
        let handler = match &self.innermost {
            Some(wrap) => wrap(handler),
            None => handler,
        };
        let caught = CatchPanicLayer::new().layer(handler);
        let attempt: AttemptService<T> = match self.timeout {
            Some(timeout) => Boxed::new(TimeoutLayer::new(timeout).layer(caught)),
            None => Boxed::new(caught),
        };
        let mut retry = RetryLayer::new(self.retry);
        if let Some(sink) = self.retry_sink {
            retry = retry.with_sink(sink);
        }
        let mut dead_letter = DeadLetterLayer::new(self.dead_letter);
        if let Some(to) = self.dead_letter_to {
            dead_letter = dead_letter.to(to);
        }
        if let Some(ttl) = self.time_to_live {
            dead_letter = dead_letter.time_to_live(ttl);
        }
        let retried: MessageService<T> = Boxed::new(retry.layer(attempt));
        let retried = match &self.around_message {
            Some(wrap) => wrap(retried),
            None => retried,
        };
        let failing = dead_letter.layer(retried);
        let deduped: Boxed<Request<T>, Outcome, Error> = match self.store {
            Some((store, config)) => {
                Boxed::new(IdempotencyLayer::new(store, config).layer(failing))
            }
            None => Boxed::new(failing),
        };
        let mut ack = AckLayer::new(self.nack_delay);
        if let Some(sink) = self.postpone {
            ack = ack.postpone_through(sink);
        }
        let settled = ServiceBuilder::new()
            .layer(ack)
            .layer(DecodeLayer::<T>::new(self.max_payload))
            .layer(MetricsLayer::labelled(self.labels))
            .service(deduped);
        Stack {
            inner: Arc::new(Layered(settled)),
            recycler: Arc::default(),
        }
    }
}

/// A stack composed of tower layers (tests only).
#[cfg(test)]
struct Layered<S>(S);

#[cfg(test)]
impl<S> Process for Layered<S>
where
    S: Service<Delivery, Response = Settled, Error = AckError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn process(self: Arc<Self>, delivery: Delivery, recycled: Option<Boxed>) -> Boxed {
        recycled::place(recycled, delivery, || {
            move |delivery| tower::ServiceExt::oneshot(self.0.clone(), delivery)
        })
    }
}

#[cfg(test)]
mod tests;
