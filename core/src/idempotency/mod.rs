//! Idempotency: deduplication with leases over a [`Store`].
//!
//! Per message with a key ([`KeySource`]): claim the key's lease; a
//! completed or dead-lettered key is a [`Outcome::Duplicate`] (acked); a key
//! another live owner holds is [`Error::Busy`] (deferred, never spun). While
//! the inner stack runs, the lease is renewed every lease/3 (one background task per layer
//! renews all the leases it holds). Then:
//! `Handled` completes the key, `DeadLettered` marks it dead-lettered,
//! `Deferred` releases it and records the failed runs, an error releases it.
//! If the future is dropped, a guard releases the key without counting an
//! attempt. A store that is down defers the message ([`Error::Store`]).

pub mod contract;
mod guard;
mod key;
mod layer;
mod memory;
mod namespaced;
pub mod outage;
mod renew;
mod store;

pub use self::key::{Key, KeySource, MAX_KEY_LEN};
pub use self::layer::IdempotencyLayer;
pub use self::memory::MemoryStore;
pub use self::namespaced::Namespaced;
pub use self::store::{Claim, Store};

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::Service;

use self::guard::LeaseGuard;
use self::renew::Renewer;
use crate::{Error, Outcome, Request, attempt};

/// How the idempotency layer keys and leases messages.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the key comes from.
    pub key: KeySource,
    /// How long a lease lasts without renewal (renewed every lease/3).
    pub lease: Duration,
    /// This worker's name in lease owners (unique per process by default).
    pub worker: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key: KeySource::default(),
            lease: Duration::from_secs(30),
            worker: crate::message::new_message_id(),
        }
    }
}

impl Config {
    /// The default config with keys from `key`.
    pub fn keyed_by(key: KeySource) -> Self {
        Config {
            key,
            ..Config::default()
        }
    }
}

static NEXT_OWNER: AtomicU64 = AtomicU64::new(0);

/// The idempotency service; see the [module docs](self).
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    renewer: Arc<Renewer>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Request<T>> for Idempotency<S>
where
    S: Service<Request<T>, Response = Outcome, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    T: Send + Sync + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let Some(key) = self.config.key.key_of(&request) else {
            return Box::pin(self.inner.call(request));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = Arc::clone(&self.store);
        let config = Arc::clone(&self.config);
        let renewer = Arc::clone(&self.renewer);
        Box::pin(async move {
            // `<worker>/<n>`, written into one allocation of the right size.
            let mut owner = String::with_capacity(config.worker.len() + 21);
            owner.push_str(&config.worker);
            owner.push('/');
            let _ = write!(owner, "{}", NEXT_OWNER.fetch_add(1, Ordering::Relaxed));
            let replay = request.message().replayed();
            let claim = store
                .claim(&key, &owner, config.lease, replay)
                .await
                .map_err(Error::Store)?;
            let failed_runs = match claim {
                Claim::Acquired { failed_runs } => failed_runs,
                Claim::Completed | Claim::DeadLettered => return Ok(Outcome::Duplicate),
                Claim::Busy { .. } => {
                    return Err(Error::Busy {
                        key: key.to_string(),
                    });
                }
            };
            request.set_attempt(attempt::resume(request.attempt(), failed_runs));
            let guard = LeaseGuard::hold(Arc::clone(&store), renewer, config.lease, key, owner);
            let result = inner.call(request).await;
            let (key, owner) = (guard.key(), guard.owner());
            let lost = |held: bool| {
                if !held {
                    tracing::warn!(%key, "the lease was lost before the result was recorded; another run of this message may have happened");
                }
            };
            let settled = match &result {
                Ok(Outcome::Handled) => store.complete(key, owner).await.map(lost),
                Ok(Outcome::DeadLettered { .. }) => store.dead_letter(key, owner).await.map(lost),
                Ok(Outcome::Deferred { attempt, .. }) => {
                    store
                        .release(key, owner, Some(attempt.saturating_sub(1)))
                        .await
                }
                Ok(Outcome::Duplicate) => store.release(key, owner, None).await,
                // A DLQ or retry write that failed keeps the failed runs, so a
                // redelivery only retries the write; an outage or shutdown counts none.
                Err(error) => store.release(key, owner, error.failed_runs()).await,
            };
            if let Err(error) = settled {
                // The message's fate is settled; the lease expires by itself.
                tracing::warn!(%error, %key, "could not record the key's state in the idempotency store");
            }
            guard.finish();
            result
        })
    }
}

#[cfg(test)]
mod tests;
