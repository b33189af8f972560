use std::sync::Arc;

use tower::Layer;

use super::renew::Renewer;
use super::{Config, Gate, Idempotency, KnownLayout, Store};

/// Applies [`Idempotency`] over a [`Store`].
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    renewer: Arc<Renewer>,
    gate: Gate,
    layout: KnownLayout,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Deduplicates through `store` with `config`.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        IdempotencyLayer {
            store,
            config: Arc::new(config),
            renewer: Arc::new(Renewer::new()),
            gate: Gate::default(),
            layout: KnownLayout::default(),
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
            renewer: Arc::clone(&self.renewer),
            gate: Arc::clone(&self.gate),
            layout: Arc::clone(&self.layout),
        }
    }
}
