use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::{Claim, ClaimOf, Fence, Held, Key, Store};
use crate::{Failure, StoreError};

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

            async fn dead_letter(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.dead_letter(&self.key(key), fence).await
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

            async fn defer_letter(
                &self,
                key: &Key,
                fence: Fence,
                letter: &Failure,
            ) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.defer_letter(&self.key(key), fence, letter).await
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
mod tests {
    use super::*;
    use crate::idempotency::MAX_KEY_LEN;
    use crate::idempotency::MemoryStore;
    use crate::idempotency::contract::{self, SameInstance};

    const LEASE: Duration = Duration::from_secs(30);

    /// The fence of an acquired claim with no failed runs; panics otherwise.
    fn acquired(claim: Claim) -> Fence {
        acquired_after(claim, 0)
    }

    fn acquired_after(claim: Claim, runs: u32) -> Fence {
        match claim {
            Claim::Acquired {
                fence,
                failed_runs,
                crashed: false,
            } if failed_runs == runs => fence,
            other => panic!("expected Acquired with {runs} failed runs, got {other:?}"),
        }
    }

    async fn complete(store: &dyn Store, key: &Key) {
        let fence = acquired(store.claim(key, "w", LEASE, 0).await.unwrap());
        assert!(store.complete(key, fence).await.unwrap());
    }

    #[tokio::test]
    async fn a_key_done_in_one_namespace_is_new_in_another() {
        let shared = Arc::new(MemoryStore::default());
        let a = Namespaced::new(Arc::clone(&shared), "epoch-0");
        let b = Namespaced::new(Arc::clone(&shared), "epoch-1");
        let key = Key::new("order-1");
        complete(&a, &key).await;

        assert_eq!(
            a.claim(&key, "w2", LEASE, 0).await.unwrap(),
            Claim::Completed,
            "still a duplicate in its own namespace"
        );
        assert_eq!(
            Namespaced::new(Arc::clone(&shared), "epoch-0")
                .claim(&key, "w3", LEASE, 0)
                .await
                .unwrap(),
            Claim::Completed,
            "a new wrapper on the same namespace (a restarted worker) sees it"
        );
        let fence = acquired(b.claim(&key, "w4", LEASE, 0).await.unwrap());
        assert!(b.complete(&key, fence).await.unwrap());
        assert_eq!(
            b.claim(&key, "w5", LEASE, 0).await.unwrap(),
            Claim::Completed
        );
        assert_eq!(shared.len(), 2, "one entry per namespace");
        acquired(shared.claim(&key, "w6", LEASE, 0).await.unwrap());
    }

    #[tokio::test]
    async fn every_operation_goes_to_the_namespaced_key() {
        let store = Namespaced::new(MemoryStore::default(), "ns");
        let key = Key::new("k");
        let stored = store.key(&key);
        assert_eq!(stored.as_str(), "ns:k");
        let w = acquired(store.claim(&key, "w", LEASE, 0).await.unwrap());
        assert!(store.renew(&key, w, LEASE).await.unwrap());
        assert!(
            !store.inner().renew(&key, w, LEASE).await.unwrap(),
            "the bare key holds no lease"
        );
        assert!(store.inner().renew(&stored, w, LEASE).await.unwrap());
        store.release(&key, w, Some(2)).await.unwrap();
        let x = acquired_after(
            store.inner().claim(&stored, "x", LEASE, 0).await.unwrap(),
            2,
        );
        store.inner().release(&stored, x, None).await.unwrap();
        let y = acquired_after(store.claim(&key, "y", LEASE, 0).await.unwrap(), 2);
        assert!(store.dead_letter(&key, y).await.unwrap());
        assert_eq!(
            store.inner().claim(&stored, "z", LEASE, 0).await.unwrap(),
            Claim::DeadLettered
        );
        let z = acquired(store.claim(&key, "z", LEASE, 1).await.unwrap());
        let held = [Held {
            key: &key,
            fence: z,
        }];
        assert_eq!(
            store
                .renew_many(&held, LEASE)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            [true],
            "batches reach the namespaced key"
        );
        assert!(store.complete_many(&held).await[0].as_ref().unwrap());
        assert_eq!(
            store.inner().claim(&stored, "v", LEASE, 2).await.unwrap(),
            Claim::Completed
        );
    }

    #[test]
    fn long_keys_stay_distinct_and_bounded() {
        let store = Namespaced::new(MemoryStore::default(), "epoch-3");
        let long = Key::new(&"k".repeat(300));
        let other = Key::new(&"k".repeat(301));
        assert!(store.key(&long).as_str().len() <= MAX_KEY_LEN);
        assert_ne!(store.key(&long), store.key(&other));
        let near = Key::new(&"x".repeat(MAX_KEY_LEN));
        assert_eq!(near.as_str().len(), MAX_KEY_LEN, "kept as is");
        assert!(
            store.key(&near).as_str().starts_with("sha256:"),
            "the prefixed key is hashed when too long"
        );
        assert_eq!(store.key(&near), Namespaced::new((), "epoch-3").key(&near));
    }

    #[test]
    fn separators_in_the_namespace_cannot_collide() {
        let (a, b) = (Namespaced::new((), "a:b"), Namespaced::new((), "a"));
        assert_ne!(a.key(&Key::new("c")), b.key(&Key::new("b:c")));
        assert_eq!(a.key(&Key::new("c")).as_str(), "a%3Ab:c");
        assert_ne!(
            Namespaced::new((), "a%3Ab").key(&Key::new("c")),
            a.key(&Key::new("c"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_contract() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new(10_000, contract::TTL));
        let store: Arc<dyn Store> = Arc::new(Namespaced::new(inner, "contract"));
        let backend = SameInstance::new(store, contract::TTL);
        if let Err(error) = contract::run_all(&backend).await {
            panic!("{error}");
        }
    }
}
