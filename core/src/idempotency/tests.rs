use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::testing::request;
use crate::{ErrorKind, Message, StoreError, wire};

type Script = Arc<dyn Fn(u32) -> Result<Outcome, Error> + Send + Sync>;

fn stack(
    store: Arc<dyn Store>,
    calls: Arc<AtomicU32>,
    script: Script,
) -> impl Service<Request<String>, Response = Outcome, Error = Error, Future: Send> + Clone {
    IdempotencyLayer::new(store, Config::keyed_by(KeySource::MessageId)).layer(service_fn(
        move |_r: Request<String>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let r = script(n);
            async move { r }
        },
    ))
}

fn handled() -> Script {
    Arc::new(|_| Ok(Outcome::Handled))
}

#[tokio::test]
async fn duplicate_of_a_completed_message_is_skipped() {
    let store = Arc::new(MemoryStore::default());
    let calls = Arc::new(AtomicU32::new(0));
    let svc = stack(store, calls.clone(), handled());
    assert_eq!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::Handled
    );
    assert_eq!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(svc.oneshot(request("b")).await.unwrap(), Outcome::Handled);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn delayed_retry_copy_is_not_a_duplicate_and_attempts_are_kept() {
    let store = Arc::new(MemoryStore::default());
    let calls = Arc::new(AtomicU32::new(0));
    let script: Script = Arc::new(|n| {
        if n == 1 {
            Ok(Outcome::Deferred {
                attempt: 3,
                due: SystemTime::now(),
            })
        } else {
            Ok(Outcome::Handled)
        }
    });
    let svc = stack(store.clone(), calls.clone(), script);
    assert!(matches!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::Deferred { .. }
    ));
    // The key is free again and remembers 2 failed runs.
    let claim = store
        .claim(&Key::new("id-a"), "probe", Duration::from_secs(1), 0)
        .await
        .unwrap();
    assert_eq!(claim, Claim::Acquired { failed_runs: 2 });
    store
        .release(&Key::new("id-a"), "probe", None)
        .await
        .unwrap();
    assert_eq!(svc.oneshot(request("a")).await.unwrap(), Outcome::Handled);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stored_failed_runs_raise_the_attempt_number() {
    let store = Arc::new(MemoryStore::default());
    let k = Key::new("id-a");
    store
        .claim(&k, "old", Duration::from_secs(1), 0)
        .await
        .unwrap();
    store.release(&k, "old", Some(3)).await.unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let s2 = seen.clone();
    let svc = IdempotencyLayer::new(store, Config::keyed_by(KeySource::MessageId)).layer(
        service_fn(move |r: Request<String>| {
            s2.store(r.attempt(), Ordering::SeqCst);
            async { Ok::<_, Error>(Outcome::Handled) }
        }),
    );
    svc.oneshot(request("a")).await.unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "attempts survive across deliveries"
    );
}

fn replayed(n: u32) -> Request<String> {
    let mut m = Message::new("a")
        .with_message_id("id-a")
        .with_header(wire::REPLAYED, n.to_string());
    m.meta.source = "orders".into();
    Request::decode(m, CancellationToken::new(), None)
}

#[tokio::test]
async fn redriven_copy_of_a_dead_lettered_message_runs_once_per_replay() {
    let store = Arc::new(MemoryStore::default());
    let calls = Arc::new(AtomicU32::new(0));
    let script: Script = Arc::new(|n| {
        if n == 1 {
            Ok(Outcome::DeadLettered {
                kind: ErrorKind::Permanent,
            })
        } else {
            Ok(Outcome::Handled)
        }
    });
    let svc = stack(store, calls.clone(), script);
    assert!(matches!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::DeadLettered { .. }
    ));
    assert_eq!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::Duplicate,
        "original's duplicate skipped"
    );
    assert_eq!(
        svc.clone().oneshot(replayed(1)).await.unwrap(),
        Outcome::Handled,
        "redrive runs"
    );
    assert_eq!(svc.oneshot(replayed(1)).await.unwrap(), Outcome::Duplicate);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn key_held_by_a_live_lease_is_deferred_not_run() {
    let store = Arc::new(MemoryStore::default());
    store
        .claim(
            &Key::new("id-a"),
            "other-worker",
            Duration::from_secs(30),
            0,
        )
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let svc = stack(store, calls.clone(), handled());
    assert!(matches!(
        svc.oneshot(request("a")).await,
        Err(Error::Busy { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn lease_is_renewed_while_the_handler_runs() {
    let store = Arc::new(MemoryStore::default());
    let lease = Duration::from_secs(3);
    let config = Config {
        lease,
        ..Config::keyed_by(KeySource::MessageId)
    };
    let svc = IdempotencyLayer::new(store.clone(), config).layer(service_fn(
        |_r: Request<String>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, Error>(Outcome::Handled)
        },
    ));
    let run = tokio::spawn(svc.oneshot(request("a")));
    tokio::time::sleep(Duration::from_secs(7)).await;
    let claim = store
        .claim(&Key::new("id-a"), "thief", lease, 0)
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Busy { .. }),
        "lease was renewed, got {claim:?}"
    );
    assert_eq!(run.await.unwrap().unwrap(), Outcome::Handled);
}

#[tokio::test]
async fn dropped_future_releases_the_key_without_counting() {
    let store = Arc::new(MemoryStore::default());
    let svc = IdempotencyLayer::new(store.clone(), Config::keyed_by(KeySource::MessageId)).layer(
        service_fn(|_r: Request<String>| async {
            futures::future::pending::<()>().await;
            Ok::<_, Error>(Outcome::Handled)
        }),
    );
    let run = tokio::spawn(svc.oneshot(request("a")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    run.abort();
    let _ = run.await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claim = store
        .claim(&Key::new("id-a"), "next", Duration::from_secs(1), 0)
        .await
        .unwrap();
    assert_eq!(claim, Claim::Acquired { failed_runs: 0 });
}

struct DownStore;

#[async_trait::async_trait]
impl Store for DownStore {
    async fn claim(&self, _: &Key, _: &str, _: Duration, _: u32) -> Result<Claim, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn renew(&self, _: &Key, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn complete(&self, _: &Key, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn dead_letter(&self, _: &Key, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn release(&self, _: &Key, _: &str, _: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
}

#[tokio::test]
async fn store_down_defers_without_running_or_dead_lettering() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = stack(Arc::new(DownStore), calls.clone(), handled());
    assert!(matches!(
        svc.oneshot(request("a")).await,
        Err(Error::Store(_))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn message_without_a_key_skips_the_store() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = IdempotencyLayer::new(Arc::new(DownStore), Config::keyed_by(KeySource::Payload))
        .layer(service_fn(move |_r: Request<String>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Error>(Outcome::Handled) }
        }));
    assert_eq!(
        svc.clone().oneshot(request("a")).await.unwrap(),
        Outcome::Handled
    );
    assert_eq!(svc.oneshot(request("a")).await.unwrap(), Outcome::Handled);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
