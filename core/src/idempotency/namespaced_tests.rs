//! The namespaced store: every operation on the namespaced key, bounded
//! keys that cannot collide (the store contract through it runs in
//! `core/tests/store_contract.rs`).

use super::*;
use crate::idempotency::MAX_KEY_LEN;
use crate::idempotency::MemoryStore;

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
    assert!(store.mark_dead_lettered(&key, y).await.unwrap());
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
