use std::sync::Arc;

use tower::Layer;

use super::{Config, Deduper, Idempotency, Store};

/// Applies [`Idempotency`] over a [`Store`].
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
