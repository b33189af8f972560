//! [`Namespaced`]: a store whose keys all live in one namespace (the Kafka
//! replay epoch).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::{Claim, ClaimOf, Fence, Held, Key, Store};
use crate::error::{Failure, StoreError};

/// A [`Store`] whose keys all live in one namespace: every key is stored as
/// `<namespace>:<key>` in the inner store; everything else is forwarded.
///
/// The main use is the Kafka replay epoch. `backstop replay --mode
/// reprocess` resets a group's offsets and bumps the group's replay epoch;
/// a worker that reads the epoch at start and keys its store by it
/// (`Namespaced::new(store, format!("epoch-{epoch}"))`, the epoch from
/// `backstop_kafka::epoch::current`) sees a new namespace after a reprocess,
/// so no key of the replayed messages is known there and every one runs
/// again. `--mode redeliver` leaves the epoch, hence the namespace, as it
/// was: the store still knows the keys and skips what was done (those
/// messages are acked as duplicates). Keys of old epochs stay in the inner
/// store until its TTL forgets them. The idempotency layer puts each key in
/// its consumer's [`Keyspace`](super::Keyspace) before the store sees it, so
/// a stored key reads `<namespace>:<keyspace>:<key>` (for example
/// `epoch-3:orders#billing:order-42`): wrappers outermost, in the order they
/// wrap, then the keyspace, then the key.
///
/// The inner store may be shared: `Namespaced<Arc<S>>` (also with
/// `S = dyn Store`) is a store too, so one store can serve several
/// namespaces (or several runs of a worker) at once. A `:` or `%` in the
/// namespace is percent-escaped, so `a:b` + `c` and `a` + `b:c` never meet.
/// The namespaced key is built from the key's stored text
/// ([`Key::as_str`]) and is itself hashed by [`Key::new`] when long.
#[derive(Clone, Debug)]
pub struct Namespaced<S> {
    inner: S,
    namespace: String,
}

impl<S> Namespaced<S> {
    /// `inner` with every key put in `namespace`.
    pub fn new(inner: S, namespace: impl Into<String>) -> Self {
        Namespaced {
            inner,
            namespace: namespace.into(),
        }
    }

    /// The namespace, as given.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The inner store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The stored key of `key` in this namespace.
    pub fn key(&self, key: &Key) -> Key {
        Key::new(&format!("{}:{}", escape(&self.namespace), key.as_str()))
    }

    /// The stored keys of `keys`, in order.
    fn keys<'a>(&self, keys: impl Iterator<Item = &'a Key>) -> Vec<Key> {
        keys.map(|key| self.key(key)).collect()
    }
}

impl Namespaced<()> {
    /// `held` with each key replaced by its stored key (`keys`, in order).
    fn held<'a>(held: &[Held<'_>], keys: &'a [Key]) -> Vec<Held<'a>> {
        held.iter()
            .zip(keys)
            .map(|(h, key)| Held {
                key,
                fence: h.fence,
            })
            .collect()
    }
}

/// `namespace` with `%` and `:` percent-escaped (unchanged when it has neither).
fn escape(namespace: &str) -> Cow<'_, str> {
    if !namespace.contains([':', '%']) {
        return Cow::Borrowed(namespace);
    }
    Cow::Owned(namespace.replace('%', "%25").replace(':', "%3A"))
}

/// Forwards every operation to `$inner` (a `&impl Store` or `&dyn Store`)
/// with the namespaced key; batches stay batches.
macro_rules! forward {
    ($ty:ty, [$($bounds:tt)*], |$s:ident| $inner:expr) => {
        #[async_trait::async_trait]
        impl<$($bounds)*> Store for $ty {
            async fn claim(
                &self,
                key: &Key,
                owner: &str,
                lease: Duration,
                replay: u32,
            ) -> Result<Claim, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.claim(&self.key(key), owner, lease, replay).await
            }

            async fn renew(
                &self,
                key: &Key,
                fence: Fence,
                lease: Duration,
            ) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.renew(&self.key(key), fence, lease).await
            }

            async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.complete(&self.key(key), fence).await
            }

            async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.mark_dead_lettered(&self.key(key), fence).await
            }

            async fn release(
                &self,
                key: &Key,
                fence: Fence,
                failed_runs: Option<u32>,
            ) -> Result<(), StoreError> {
                let $s = self;
                let inner = $inner;
                inner.release(&self.key(key), fence, failed_runs).await
            }

            async fn release_with_letter(
                &self,
                key: &Key,
                fence: Fence,
                letter: &Failure,
            ) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.release_with_letter(&self.key(key), fence, letter).await
            }

            async fn layout(&self) -> Result<super::Layout, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.layout().await
            }

            fn storage_key(&self, key: &Key) -> Key {
                let $s = self;
                let inner = $inner;
                inner.storage_key(&self.key(key))
            }

            fn remote(&self) -> bool {
                let $s = self;
                let inner = $inner;
                inner.remote()
            }

            fn keeps_owner(&self) -> bool {
                let $s = self;
                let inner = $inner;
                inner.keeps_owner()
            }

            async fn claim_many(
                &self,
                claims: &[ClaimOf<'_>],
                lease: Duration,
            ) -> Vec<Result<Claim, StoreError>> {
                let $s = self;
                let inner = $inner;
                let keys = self.keys(claims.iter().map(|c| c.key));
                let claims: Vec<ClaimOf<'_>> = claims
                    .iter()
                    .zip(&keys)
                    .map(|(c, key)| ClaimOf { key, ..*c })
                    .collect();
                inner.claim_many(&claims, lease).await
            }

            async fn renew_many(
                &self,
                held: &[Held<'_>],
                lease: Duration,
            ) -> Vec<Result<bool, StoreError>> {
                let $s = self;
                let inner = $inner;
                let keys = self.keys(held.iter().map(|h| h.key));
                let held = Namespaced::<()>::held(held, &keys);
                inner.renew_many(&held, lease).await
            }

            async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
                let $s = self;
                let inner = $inner;
                let keys = self.keys(held.iter().map(|h| h.key));
                let held = Namespaced::<()>::held(held, &keys);
                inner.complete_many(&held).await
            }
        }
    };
}

forward!(Namespaced<S>, [S: Store], |s| &s.inner);
forward!(Namespaced<Arc<S>>, [S: Store + ?Sized], |s| &*s.inner);

#[cfg(test)]
#[path = "namespaced_tests.rs"]
mod tests;
