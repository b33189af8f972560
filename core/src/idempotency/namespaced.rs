use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::{Claim, Key, Store};
use crate::StoreError;

/// A [`Store`] whose keys all live in one namespace: every key is stored as
/// `<namespace>:<key>` in the inner store; everything else is forwarded.
///
/// The main use is the Kafka replay epoch. `backstop replay --mode
/// reprocess` resets a group's offsets and bumps the group's replay epoch;
/// a worker that reads the epoch at start and keys its store by it
/// (`Namespaced::new(store, format!("epoch-{epoch}"))`, the epoch from
/// `backstop_cli::epoch::current`) sees a new namespace after a reprocess,
/// so no key of the replayed messages is known there and every one runs
/// again. `--mode redeliver` leaves the epoch, hence the namespace, as it
/// was: the store still knows the keys and skips what was done (those
/// messages are acked as duplicates). Keys of old epochs stay in the inner
/// store until its TTL forgets them.
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
}

/// `namespace` with `%` and `:` percent-escaped (unchanged when it has neither).
fn escape(namespace: &str) -> Cow<'_, str> {
    if !namespace.contains([':', '%']) {
        return Cow::Borrowed(namespace);
    }
    Cow::Owned(namespace.replace('%', "%25").replace(':', "%3A"))
}

/// Forwards every operation to `$inner` (a `&impl Store` or `&dyn Store`) with the namespaced key.
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
                owner: &str,
                lease: Duration,
            ) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.renew(&self.key(key), owner, lease).await
            }

            async fn complete(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.complete(&self.key(key), owner).await
            }

            async fn dead_letter(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
                let $s = self;
                let inner = $inner;
                inner.dead_letter(&self.key(key), owner).await
            }

            async fn release(
                &self,
                key: &Key,
                owner: &str,
                failed_runs: Option<u32>,
            ) -> Result<(), StoreError> {
                let $s = self;
                let inner = $inner;
                inner.release(&self.key(key), owner, failed_runs).await
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

    fn acquired() -> Claim {
        Claim::Acquired { failed_runs: 0 }
    }

    async fn complete(store: &dyn Store, key: &Key) {
        assert_eq!(store.claim(key, "w", LEASE, 0).await.unwrap(), acquired());
        assert!(store.complete(key, "w").await.unwrap());
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
        assert_eq!(
            b.claim(&key, "w4", LEASE, 0).await.unwrap(),
            acquired(),
            "not a duplicate in another namespace"
        );
        assert!(b.complete(&key, "w4").await.unwrap());
        assert_eq!(
            b.claim(&key, "w5", LEASE, 0).await.unwrap(),
            Claim::Completed
        );
        assert_eq!(shared.len(), 2, "one entry per namespace");
        assert_eq!(
            shared.claim(&key, "w6", LEASE, 0).await.unwrap(),
            acquired(),
            "the bare key is untouched"
        );
    }

    #[tokio::test]
    async fn every_operation_goes_to_the_namespaced_key() {
        let store = Namespaced::new(MemoryStore::default(), "ns");
        let key = Key::new("k");
        let stored = store.key(&key);
        assert_eq!(stored.as_str(), "ns:k");
        assert_eq!(store.claim(&key, "w", LEASE, 0).await.unwrap(), acquired());
        assert!(store.renew(&key, "w", LEASE).await.unwrap());
        assert!(
            !store.inner().renew(&key, "w", LEASE).await.unwrap(),
            "the bare key holds no lease"
        );
        assert!(store.inner().renew(&stored, "w", LEASE).await.unwrap());
        store.release(&key, "w", Some(2)).await.unwrap();
        assert_eq!(
            store.inner().claim(&stored, "x", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 2 }
        );
        store.inner().release(&stored, "x", None).await.unwrap();
        assert_eq!(
            store.claim(&key, "y", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 2 }
        );
        assert!(store.dead_letter(&key, "y").await.unwrap());
        assert_eq!(
            store.inner().claim(&stored, "z", LEASE, 0).await.unwrap(),
            Claim::DeadLettered
        );
        assert_eq!(
            store.claim(&key, "z", LEASE, 1).await.unwrap(),
            acquired(),
            "a redrive is admitted once"
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
