//! [`Delivery`]: a [`Message`] plus its [`Acker`], settled at most once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cancellation::Cancellation;
use crate::error::BoxError;
use crate::message::Message;
use crate::transaction::{InTransaction, Transaction};

/// A failure to settle a delivery with the broker.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The channel or consumer that delivered the message is gone; the broker will redeliver.
    #[error("delivery channel is gone, the broker will redeliver the message: {0}")]
    ChannelGone(String),
    /// The broker did not know the delivery (stale tag, fenced partition).
    #[error("broker does not know this delivery any more: {0}")]
    Stale(String),
    /// Another broker error.
    #[error("ack failed: {0}")]
    Broker(#[source] BoxError),
}

/// An adapter's handle to settle one delivery with its broker.
///
/// `ack` and `nack` consume the acker, so a delivery is settled at most once.
/// If a [`Delivery`] is dropped unsettled, [`Acker::abandon`] runs: it must
/// make the broker redeliver the message (the default nacks with requeue on
/// the current tokio runtime).
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use backstop::Message;
/// use backstop::delivery::{Acker, Delivery};
/// use backstop::error::AckError;
///
/// /// Tells a (pretend) broker how each delivery ended.
/// struct Logged(Arc<Mutex<Vec<&'static str>>>);
///
/// #[async_trait::async_trait]
/// impl Acker for Logged {
///     async fn ack(self: Box<Self>) -> Result<(), AckError> {
///         self.0.lock().unwrap().push("ack");
///         Ok(())
///     }
///     async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
///         self.0.lock().unwrap().push(if requeue { "nack, requeue" } else { "nack" });
///         Ok(())
///     }
///     fn abandon(self: Box<Self>) {
///         // Synchronous, from a drop: the broker must redeliver the message.
///         self.0.lock().unwrap().push("abandoned, redeliver");
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), AckError> {
/// let log = Arc::new(Mutex::new(Vec::new()));
/// Delivery::new(Message::new("a"), Logged(Arc::clone(&log))).ack().await?;
/// Delivery::new(Message::new("b"), Logged(Arc::clone(&log))).nack(true).await?;
/// // A delivery dropped unsettled (its task died, say) is never lost.
/// drop(Delivery::new(Message::new("c"), Logged(Arc::clone(&log))));
/// assert_eq!(*log.lock().unwrap(), ["ack", "nack, requeue", "abandoned, redeliver"]);
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait Acker: Send + 'static {
    /// Acknowledges the message: the broker forgets it.
    async fn ack(self: Box<Self>) -> Result<(), AckError>;

    /// [`ack`](Acker::ack) done at once, by an adapter whose ack needs no
    /// waiting (the in-memory broker; Kafka, which only marks the offset
    /// done): `Some` is the ack's result, and the acker is then spent (it
    /// is dropped, neither acked again nor [abandoned](Acker::abandon)).
    /// `None`, the default, means "call `ack`". [`AckHandle::ack`] asks
    /// this first, so such an ack costs no boxed future.
    fn ack_now(&mut self) -> Option<Result<(), AckError>> {
        None
    }

    /// Negatively acknowledges the message; with `requeue` the broker redelivers it.
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError>;

    /// Called when the delivery is dropped unsettled; must lead to a redelivery.
    fn abandon(self: Box<Self>) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(error) = self.nack(true).await {
                    tracing::debug!(%error, "nack of an abandoned delivery failed; the broker redelivers it when the channel closes");
                }
            });
        }
    }
}

/// Settles the deliveries of one source by their tags, from one value
/// every delivery shares: a delivery then carries the settler and its tag
/// ([`AckHandle::tagged`], [`Delivery::tagged`]) and no acker of its own,
/// so handing one out allocates nothing. The other way in is [`Acker`],
/// one value per delivery.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backstop::Message;
/// use backstop::delivery::{Delivery, Settler};
/// use backstop::error::AckError;
///
/// #[derive(Default)]
/// struct Log(Mutex<Vec<String>>);
///
/// #[async_trait::async_trait]
/// impl Settler for Log {
///     async fn ack(&self, tag: u64) -> Result<(), AckError> {
///         self.ack_now(tag).unwrap_or(Ok(()))
///     }
///     fn ack_now(&self, tag: u64) -> Option<Result<(), AckError>> {
///         self.0.lock().unwrap().push(format!("ack {tag}"));
///         Some(Ok(()))
///     }
///     async fn nack(&self, tag: u64, requeue: bool) -> Result<(), AckError> {
///         self.0.lock().unwrap().push(format!("nack {tag}, requeue {requeue}"));
///         Ok(())
///     }
///     fn abandon(self: Arc<Self>, tag: u64) {
///         self.0.lock().unwrap().push(format!("abandoned {tag}"));
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), AckError> {
/// let log = Arc::new(Log::default());
/// let settler: Arc<dyn Settler> = log.clone();
/// Delivery::tagged(Arc::new(Message::new("a")), Arc::clone(&settler), 1).ack().await?;
/// Delivery::tagged(Arc::new(Message::new("b")), Arc::clone(&settler), 2).nack(true).await?;
/// drop(Delivery::tagged(Arc::new(Message::new("c")), settler, 3));
/// assert_eq!(*log.0.lock().unwrap(), ["ack 1", "nack 2, requeue true", "abandoned 3"]);
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait Settler: Send + Sync + 'static {
    /// Acknowledges the delivery `tag`: the broker forgets it.
    async fn ack(&self, tag: u64) -> Result<(), AckError>;

    /// [`ack`](Settler::ack) done at once, when it needs no waiting (as
    /// [`Acker::ack_now`]): `Some` is the ack's result; `None`, the
    /// default, means "call `ack`".
    fn ack_now(&self, tag: u64) -> Option<Result<(), AckError>> {
        let _ = tag;
        None
    }

    /// Negatively acknowledges the delivery `tag`; with `requeue` the
    /// broker redelivers it.
    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), AckError>;

    /// Called when the delivery `tag` is dropped unsettled; must lead to a
    /// redelivery. By default, a requeueing nack on a spawned task.
    fn abandon(self: Arc<Self>, tag: u64) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(error) = self.nack(tag, true).await {
                    tracing::debug!(%error, "nack of an abandoned delivery failed; the broker redelivers it when the channel closes");
                }
            });
        }
    }
}

/// Settles a delivery at most once; dropping it unsettled abandons it (requeue).
pub struct AckHandle {
    acker: Settling,
}

/// How an [`AckHandle`] settles its delivery, until it has.
enum Settling {
    /// Through the delivery's own acker.
    Own(Box<dyn Acker>),
    /// Through its source's settler, by tag.
    Tagged(Arc<dyn Settler>, u64),
    /// Settled (or being settled).
    Spent,
}

impl AckHandle {
    /// Wraps an adapter's acker.
    pub fn new(acker: impl Acker) -> Self {
        AckHandle {
            acker: Settling::Own(Box::new(acker)),
        }
    }

    /// Settles the delivery `tag` through `settler` (see [`Settler`]).
    pub fn tagged(settler: Arc<dyn Settler>, tag: u64) -> Self {
        AckHandle {
            acker: Settling::Tagged(settler, tag),
        }
    }

    /// Acknowledges the delivery (at once if the acker can, see
    /// [`Acker::ack_now`]).
    pub async fn ack(mut self) -> Result<(), AckError> {
        if let Some(result) = self.ack_at_once() {
            return result;
        }
        match std::mem::replace(&mut self.acker, Settling::Spent) {
            Settling::Own(acker) => acker.ack().await,
            Settling::Tagged(settler, tag) => settler.ack(tag).await,
            Settling::Spent => Ok(()),
        }
    }

    /// Acknowledges the delivery if its acker can at once
    /// ([`Acker::ack_now`], [`Settler::ack_now`]): `Some` is the ack's
    /// result and the handle is spent (dropping it does nothing); `None`
    /// leaves the handle as it was, for [`ack`](Self::ack). An [`Acker`]
    /// that wraps a handle (to time or count its acks) answers its own
    /// `ack_now` with this, so the wrapped ack keeps costing no future.
    ///
    /// ```
    /// use backstop::Message;
    /// use backstop::memory::MemoryBroker;
    /// use backstop::runner::Source;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let broker = MemoryBroker::new();
    /// broker.publish_now("orders", Message::new("a")).unwrap();
    /// let mut source = broker.consume("orders", 1);
    /// let delivery = source.next().await.unwrap().unwrap();
    /// let (_message, mut handle, _cancel) = delivery.into_parts();
    /// // The in-memory broker acks without waiting.
    /// assert!(matches!(handle.ack_at_once(), Some(Ok(()))));
    /// drop(handle); // spent: not abandoned, so not redelivered
    /// let stats = broker.stats("orders");
    /// assert_eq!((stats.acked, stats.unacked, stats.ready), (1, 0, 0));
    /// # }
    /// ```
    pub fn ack_at_once(&mut self) -> Option<Result<(), AckError>> {
        let result = match &mut self.acker {
            Settling::Own(acker) => acker.ack_now()?,
            Settling::Tagged(settler, tag) => settler.ack_now(*tag)?,
            Settling::Spent => return Some(Ok(())),
        };
        self.acker = Settling::Spent;
        Some(result)
    }

    /// Negatively acknowledges the delivery.
    pub async fn nack(mut self, requeue: bool) -> Result<(), AckError> {
        match std::mem::replace(&mut self.acker, Settling::Spent) {
            Settling::Own(acker) => acker.nack(requeue).await,
            Settling::Tagged(settler, tag) => settler.nack(tag, requeue).await,
            Settling::Spent => Ok(()),
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.acker, Settling::Spent) {
            Settling::Own(acker) => acker.abandon(),
            Settling::Tagged(settler, tag) => settler.abandon(tag),
            Settling::Spent => {}
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("settled", &matches!(self.acker, Settling::Spent))
            .finish()
    }
}

/// A message as a source hands it out: the [`Message`] and the handle to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// Shared, so a source that keeps the message (to requeue it) does not copy it.
    message: Arc<Message>,
    acker: AckHandle,
    /// Created on first use: the runner replaces it anyway, so a fresh
    /// token per delivery would be allocated only to be dropped. Shared:
    /// the runner hands every delivery the same one (a token's clone takes
    /// a lock on its tree; an `Arc`'s does not).
    cancel: Token,
    /// Cancelled by the source when it loses the delivery (a revoked
    /// partition). Behind an `Arc`, so a source can share one between the
    /// deliveries it fences together (the Kafka source: one per
    /// partition) without a token clone, which takes its tree's lock.
    fence: Option<Arc<CancellationToken>>,
    /// When the broker would take the delivery back if it were still unsettled.
    deadline: Option<Instant>,
    /// Settle without running: postpone (the runner stopped consuming).
    postpone: bool,
    /// The source's transaction the delivery's effects wait for, if any.
    transaction: Option<InTransaction>,
}

/// A delivery's cancellation token: set (the runner's shared one), or made
/// on first use. Setting it is a move, not a `OnceLock`'s initialization.
#[derive(Debug)]
enum Token {
    Set(Arc<CancellationToken>),
    Lazy(OnceLock<Arc<CancellationToken>>),
}

impl Token {
    /// The token, if one was set or made.
    fn into_inner(self) -> Option<Arc<CancellationToken>> {
        match self {
            Token::Set(token) => Some(token),
            Token::Lazy(cell) => cell.into_inner(),
        }
    }
}

impl Delivery {
    /// A delivery of `message`, settled through `acker`.
    pub fn new(message: Message, acker: impl Acker) -> Self {
        Self::shared(Arc::new(message), acker)
    }

    /// A delivery of a message the source also keeps (for instance to
    /// requeue it), settled through `acker`: the stack reads the same
    /// message, nothing is copied.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use backstop::{Message};
    /// use backstop::delivery::{Acker, Delivery};
    /// use backstop::error::AckError;
    ///
    /// struct Noop;
    /// #[async_trait::async_trait]
    /// impl Acker for Noop {
    ///     async fn ack(self: Box<Self>) -> Result<(), AckError> { Ok(()) }
    ///     async fn nack(self: Box<Self>, _requeue: bool) -> Result<(), AckError> { Ok(()) }
    /// }
    ///
    /// let kept = Arc::new(Message::new("{}"));
    /// let delivery = Delivery::shared(Arc::clone(&kept), Noop);
    /// assert!(std::ptr::eq(delivery.message(), &*kept));
    /// ```
    pub fn shared(message: Arc<Message>, acker: impl Acker) -> Self {
        Self::handled(message, AckHandle::new(acker))
    }

    /// A delivery of a message the source also keeps, settled through its
    /// source's `settler` by `tag` (see [`Settler`]): nothing is allocated
    /// for it.
    pub fn tagged(message: Arc<Message>, settler: Arc<dyn Settler>, tag: u64) -> Self {
        Self::handled(message, AckHandle::tagged(settler, tag))
    }

    fn handled(message: Arc<Message>, acker: AckHandle) -> Self {
        Delivery {
            message,
            acker,
            cancel: Token::Lazy(OnceLock::new()),
            fence: None,
            deadline: None,
            postpone: false,
            transaction: None,
        }
    }

    /// The delivery must be settled before `deadline`: past it the broker
    /// takes it back (RabbitMQ's `consumer_timeout` closes the channel).
    /// The [`AckLayer`](crate::ack::AckLayer) postpones it through the
    /// broker in time; the retry layer never sleeps past it.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// When the delivery must be settled by, if the source has a limit.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Marks the delivery to be postponed without running (the runner
    /// stopped consuming while it was already received).
    #[must_use]
    pub fn postponed(mut self) -> Self {
        self.postpone = true;
        self
    }

    /// True when the delivery is to be postponed without running.
    pub fn is_postponed(&self) -> bool {
        self.postpone
    }

    /// The source cancels `token` when it loses this delivery (a revoked
    /// Kafka partition): the handler's cancellation then fires as on
    /// shutdown, and its settlement is refused by the source.
    #[must_use]
    pub fn fenced_by(self, token: CancellationToken) -> Self {
        self.fenced_by_shared(Arc::new(token))
    }

    /// As [`fenced_by`](Self::fenced_by), with a token the source shares
    /// between the deliveries it fences together (the Kafka source: one
    /// per partition), so handing one out takes no lock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use backstop::memory::MemoryBroker;
    /// use backstop::runner::Source;
    /// use backstop::{CancellationToken, Message};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = MemoryBroker::new();
    /// broker.publish_now("orders", Message::new("a"))?;
    /// let mut source = broker.consume("orders", 8);
    /// let partition = Arc::new(CancellationToken::new());
    /// let mut delivery = source
    ///     .next()
    ///     .await
    ///     .ok_or("a delivery")??
    ///     .fenced_by_shared(Arc::clone(&partition));
    /// // The source lost the partition: the delivery's handler is cancelled.
    /// partition.cancel();
    /// assert!(delivery.take_fence().is_some_and(|fence| fence.is_cancelled()));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn fenced_by_shared(mut self, token: Arc<CancellationToken>) -> Self {
        self.fence = Some(token);
        self
    }

    /// The delivery's effects (dead letters, retry copies, the handler's
    /// publishes, its idempotency marks) go into `transaction` instead of
    /// being made at once; see [`transaction`](crate::transaction).
    #[must_use]
    pub fn in_transaction(mut self, transaction: Arc<dyn Transaction>) -> Self {
        self.transaction = Some(InTransaction(transaction));
        self
    }

    /// Takes the transaction the delivery belongs to, if any.
    pub fn take_transaction(&mut self) -> Option<InTransaction> {
        self.transaction.take()
    }

    /// Takes the token the source cancels when it loses the delivery, if any.
    pub fn take_fence(&mut self) -> Option<CancellationToken> {
        self.fence.take().map(Arc::unwrap_or_clone)
    }

    /// As [`take_fence`](Self::take_fence), the token as shared (no clone).
    pub(crate) fn take_shared_fence(&mut self) -> Option<Arc<CancellationToken>> {
        self.fence.take()
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Sets the token the handler sees as its cancellation (the runner's
    /// shutdown: a child of the token it was given, of its own).
    #[must_use]
    pub fn with_cancellation(self, token: CancellationToken) -> Self {
        self.with_shared_cancellation(Arc::new(token))
    }

    /// As [`with_cancellation`](Self::with_cancellation), with a token the
    /// caller shares between deliveries (the runner: one per run).
    #[must_use]
    pub fn with_shared_cancellation(mut self, token: Arc<CancellationToken>) -> Self {
        self.cancel = Token::Set(token);
        self
    }

    /// The cancellation token that travels with the delivery.
    pub fn cancellation(&self) -> &CancellationToken {
        match &self.cancel {
            Token::Set(token) => token,
            Token::Lazy(cell) => cell.get_or_init(Arc::default),
        }
    }

    /// Splits the delivery into its (shared) message, its ack handle and its
    /// cancellation token.
    pub fn into_parts(self) -> (Arc<Message>, AckHandle, CancellationToken) {
        let cancel = self.cancel.into_inner().map(Arc::unwrap_or_clone);
        (self.message, self.acker, cancel.unwrap_or_default())
    }

    /// As [`into_parts`](Self::into_parts), the token as shared (no clone).
    pub(crate) fn into_shared_parts(self) -> (Arc<Message>, AckHandle, Arc<CancellationToken>) {
        let cancel = self.cancel.into_inner().unwrap_or_default();
        (self.message, self.acker, cancel)
    }

    /// Acknowledges the delivery.
    pub async fn ack(self) -> Result<(), AckError> {
        self.acker.ack().await
    }

    /// Negatively acknowledges the delivery.
    pub async fn nack(self, requeue: bool) -> Result<(), AckError> {
        self.acker.nack(requeue).await
    }
}

/// What the ack layer hands inward: the message and the delivery's cancellation.
#[derive(Debug)]
pub struct Received {
    /// The message (shared with the source, which may keep it to requeue it).
    pub message: Arc<Message>,
    /// Cancelled on shutdown, and when something cancels this delivery
    /// alone (its source lost it, it reached its unacked-time budget).
    pub cancel: Cancellation,
    /// When the delivery must be settled by ([`Delivery::deadline`]).
    pub deadline: Option<Instant>,
    /// The source's transaction its effects wait for
    /// ([`Delivery::in_transaction`]), if any.
    pub transaction: Option<InTransaction>,
}
