//! The layer's keyspaces: per consumer, with the epoch wrapper outside, and
//! a migration window that reads and holds the legacy keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::error::StoreError;
use crate::message::Message;

const LEASE: Duration = Duration::from_secs(30);

/// A request for message id `id` from `queue` (and Kafka `group`).
fn from(queue: &str, group: Option<&str>, id: &str) -> Request<String> {
    let mut m = Message::new("x").with_message_id(id);
    m.meta.source = queue.into();
    m.meta.group = group.map(Into::into);
    Request::decode(m, CancellationToken::new(), None)
}

/// A memory store that reports `layout`.
struct InLayout(MemoryStore, Layout);

#[async_trait::async_trait]
impl Store for InLayout {
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        self.0.claim(key, owner, lease, replay).await
    }
    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        self.0.renew(key, fence, lease).await
    }
    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.0.complete(key, fence).await
    }
    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.0.mark_dead_lettered(key, fence).await
    }
    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        self.0.release(key, fence, failed_runs).await
    }
    async fn layout(&self) -> Result<Layout, StoreError> {
        Ok(self.1)
    }
}

/// The layer over `store` with `config`, counting runs.
fn counted(
    store: Arc<dyn Store>,
    config: Config,
    runs: &Arc<AtomicU32>,
) -> impl Service<Request<String>, Response = Outcome, Error = Error, Future: Send> + Clone {
    let runs = Arc::clone(runs);
    IdempotencyLayer::new(store, config).layer(service_fn(move |_r: Request<String>| {
        runs.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Error>(Outcome::Handled) }
    }))
}

fn by_id() -> Config {
    Config::keyed_by(KeySource::MessageId)
}

#[tokio::test]
async fn two_consumers_of_one_store_each_run_every_message() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let runs = Arc::new(AtomicU32::new(0));
    let svc = counted(Arc::clone(&store), by_id(), &runs);
    for (queue, group) in [
        ("billing", None),
        ("shipping", None),
        ("orders", Some("a")),
        ("orders", Some("b")),
    ] {
        assert_eq!(
            svc.clone()
                .oneshot(from(queue, group, "o-42"))
                .await
                .unwrap(),
            Outcome::Handled,
            "{queue} {group:?} runs its copy"
        );
    }
    assert_eq!(
        svc.clone()
            .oneshot(from("billing", None, "o-42"))
            .await
            .unwrap(),
        Outcome::Duplicate,
        "a redelivery in one keyspace is still a duplicate"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_service_name_is_added_never_substituted() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let runs = Arc::new(AtomicU32::new(0));
    let svc = counted(Arc::clone(&store), by_id().service("billing"), &runs);
    svc.clone()
        .oneshot(from("orders", None, "o-1"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(from("returns", None, "o-1"))
        .await
        .unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one service, two queues: two keyspaces"
    );
    let key = Keyspace::new("orders", None, Some("billing")).key(&Key::new("o-1"));
    assert_eq!(key.as_str(), "billing@orders:o-1");
    assert_eq!(
        store.claim(&key, "probe", LEASE, 0).await.unwrap(),
        Claim::Completed
    );
}

/// The documented order: store wrappers (the replay epoch's `Namespaced`)
/// outermost, then the consumer's keyspace, then the key.
#[tokio::test]
async fn the_epoch_wraps_the_keyspace() {
    let inner = Arc::new(MemoryStore::default());
    let runs = Arc::new(AtomicU32::new(0));
    for epoch in [0, 1] {
        let store: Arc<dyn Store> = Arc::new(Namespaced::new(
            Arc::clone(&inner),
            format!("epoch-{epoch}"),
        ));
        let svc = counted(store, by_id(), &runs);
        svc.clone()
            .oneshot(from("orders", Some("g"), "o-1"))
            .await
            .unwrap();
        assert_eq!(
            svc.oneshot(from("orders", Some("g"), "o-1")).await.unwrap(),
            Outcome::Duplicate
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a reprocess epoch runs every message again"
    );
    let stored = Key::new("epoch-1:orders#g:o-1");
    assert_eq!(
        inner.claim(&stored, "probe", LEASE, 0).await.unwrap(),
        Claim::Completed
    );
}

#[tokio::test]
async fn the_legacy_layout_keeps_keys_as_given() {
    let store = Arc::new(InLayout(MemoryStore::default(), Layout::Legacy));
    let runs = Arc::new(AtomicU32::new(0));
    let svc = counted(store.clone(), by_id(), &runs);
    svc.clone()
        .oneshot(from("billing", None, "o-1"))
        .await
        .unwrap();
    assert_eq!(
        svc.oneshot(from("shipping", None, "o-1")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(
        store
            .0
            .claim(&Key::new("o-1"), "p", LEASE, 0)
            .await
            .unwrap(),
        Claim::Completed
    );
}

#[tokio::test]
async fn a_migration_reads_and_holds_the_legacy_keys() {
    let until = SystemTime::now() + Duration::from_secs(3600);
    let store = Arc::new(InLayout(
        MemoryStore::default(),
        Layout::Migrating { until },
    ));
    let (done, dead, held) = (Key::new("o-done"), Key::new("o-dead"), Key::new("o-held"));
    for (key, dead_letter) in [(&done, false), (&dead, true)] {
        let fence = store
            .0
            .claim(key, "old", LEASE, 0)
            .await
            .unwrap()
            .fence()
            .unwrap();
        if dead_letter {
            store.0.mark_dead_lettered(key, fence).await.unwrap();
        } else {
            store.0.complete(key, fence).await.unwrap();
        }
    }
    let old = store
        .0
        .claim(&held, "old", LEASE, 0)
        .await
        .unwrap()
        .fence()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let svc = counted(store.clone(), by_id(), &runs);
    let ks = Keyspace::new("orders", None, None);
    for id in ["o-done", "o-dead"] {
        assert_eq!(
            svc.clone().oneshot(from("orders", None, id)).await.unwrap(),
            Outcome::Duplicate
        );
    }
    assert_eq!(
        store.0.claim(&ks.key(&done), "p", LEASE, 0).await.unwrap(),
        Claim::Completed,
        "recorded in the new layout"
    );
    assert_eq!(
        store.0.claim(&ks.key(&dead), "p", LEASE, 0).await.unwrap(),
        Claim::DeadLettered
    );
    assert!(
        matches!(
            svc.clone().oneshot(from("orders", None, "o-held")).await,
            Err(Error::Busy { .. })
        ),
        "a key an old worker holds is busy"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    store.0.release(&held, old, None).await.unwrap();
    // A run holds the legacy lease too: an old worker finds the key busy meanwhile.
    let probe = Arc::clone(&store);
    let svc = IdempotencyLayer::new(store.clone(), by_id()).layer(service_fn(
        move |_r: Request<String>| {
            let probe = Arc::clone(&probe);
            async move {
                let claim = probe
                    .0
                    .claim(&Key::new("o-held"), "old", LEASE, 0)
                    .await
                    .unwrap();
                assert!(matches!(claim, Claim::Busy { .. }), "{claim:?}");
                Ok::<_, Error>(Outcome::Handled)
            }
        },
    ));
    assert_eq!(
        svc.oneshot(from("orders", None, "o-held")).await.unwrap(),
        Outcome::Handled
    );
    assert_eq!(
        store.0.claim(&held, "old", LEASE, 0).await.unwrap(),
        Claim::Completed,
        "old workers see it done"
    );
}

#[tokio::test]
async fn after_the_window_only_the_new_layout_is_read() {
    let until = SystemTime::now() - Duration::from_secs(1);
    let store = Arc::new(InLayout(
        MemoryStore::default(),
        Layout::Migrating { until },
    ));
    let fence = store
        .0
        .claim(&Key::new("o-1"), "old", LEASE, 0)
        .await
        .unwrap()
        .fence()
        .unwrap();
    store.0.complete(&Key::new("o-1"), fence).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let svc = counted(store, by_id(), &runs);
    assert_eq!(
        svc.oneshot(from("orders", None, "o-1")).await.unwrap(),
        Outcome::Handled
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
