use std::sync::Arc;

use tower::Layer;

use super::{Config, Deduper, Idempotency, Store};

/// Applies [`Idempotency`] over a [`Store`].
///
/// Used alone over a [`MemoryStore`](super::MemoryStore): the second
/// delivery of a message id is a duplicate, and the inner service runs once.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// use backstop::idempotency::{Config, IdempotencyLayer, MemoryStore};
/// use backstop::outcome::Outcome;
/// use backstop::request::Request;
/// use backstop::{KeySource, Message};
/// use tokio_util::sync::CancellationToken;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let runs = Arc::new(AtomicU32::new(0));
/// let counted = Arc::clone(&runs);
/// let charge = service_fn(move |_request: Request<String>| {
///     counted.fetch_add(1, Ordering::SeqCst);
///     async { Ok(Outcome::Handled) }
/// });
/// let config = Config { key: KeySource::MessageId, ..Config::default() };
/// let once = IdempotencyLayer::new(Arc::new(MemoryStore::default()), config).layer(charge);
///
/// for _ in 0..2 {
///     let message = Message::new("\"charge 10\"").with_message_id("m-1");
///     let request = Request::<String>::decode(message, CancellationToken::new(), None);
///     once.clone().oneshot(request).await.expect("the store is up");
/// }
/// let again = Request::<String>::decode(
///     Message::new("\"charge 10\"").with_message_id("m-1"),
///     CancellationToken::new(),
///     None,
/// );
/// assert_eq!(once.oneshot(again).await.expect("the store is up"), Outcome::Duplicate);
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// # }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    deduper: Deduper,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("config", self.deduper.config())
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Deduplicates through `store` with `config`.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        IdempotencyLayer {
            deduper: Deduper::new(store, config),
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            deduper: self.deduper.clone(),
        }
    }
}
