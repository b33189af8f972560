use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::testing::request;

/// The stored key of message id `id` consumed from `queue`.
fn stored_in(queue: &str, id: &str) -> Key {
    super::Keyspace::new(queue, None, None).key(&Key::new(id))
}

/// The stored key of message id `id` from the test requests' queue.
fn stored(id: &str) -> Key {
    stored_in("orders", id)
}
use crate::error::{ErrorKind, StoreError};
use crate::message::Message;
use crate::wire;

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
        .claim(&stored("id-a"), "probe", Duration::from_secs(1), 0)
        .await
        .unwrap();
    let Claim::Acquired {
        fence,
        failed_runs: 2,
        crashed: false,
    } = claim
    else {
        panic!("expected 2 failed runs, got {claim:?}");
    };
    store.release(&stored("id-a"), fence, None).await.unwrap();
    assert_eq!(svc.oneshot(request("a")).await.unwrap(), Outcome::Handled);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stored_failed_runs_raise_the_attempt_number() {
    let store = Arc::new(MemoryStore::default());
    let k = stored("id-a");
    let fence = store
        .claim(&k, "old", Duration::from_secs(1), 0)
        .await
        .unwrap()
        .fence()
        .unwrap();
    store.release(&k, fence, Some(3)).await.unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let s2 = seen.clone();
    let svc = IdempotencyLayer::new(store, Config::keyed_by(KeySource::MessageId)).layer(
        service_fn(move |r: Request<String>| {
            s2.store(r.attempt(), Ordering::SeqCst);
            let token = r.extensions.get::<LeaseToken>().cloned();
            async move {
                let token = token.expect("a leased run carries its token");
                assert_eq!(token.failed_runs, 3, "the store-confirmed count");
                assert_eq!(token.key, stored("id-a"));
                Ok::<_, Error>(Outcome::Handled)
            }
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
        .claim(&stored("id-a"), "other-worker", Duration::from_secs(30), 0)
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
        .claim(&stored("id-a"), "thief", lease, 0)
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
        .claim(&stored("id-a"), "next", Duration::from_secs(1), 0)
        .await
        .unwrap();
    assert!(
        matches!(
            claim,
            Claim::Acquired {
                failed_runs: 0,
                crashed: false,
                ..
            }
        ),
        "released, not counted: {claim:?}"
    );
}

/// A store whose every call fails, as one that is down.
pub(super) struct DownStore;

#[async_trait::async_trait]
impl Store for DownStore {
    async fn claim(&self, _: &Key, _: &str, _: Duration, _: u32) -> Result<Claim, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn renew(&self, _: &Key, _: Fence, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn complete(&self, _: &Key, _: Fence) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn mark_dead_lettered(&self, _: &Key, _: Fence) -> Result<bool, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn release(&self, _: &Key, _: Fence, _: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn layout(&self) -> Result<super::Layout, StoreError> {
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
    // The stack's pipeline runs the same logic: no store call either (not
    // even the key layout's), so a poison message without a key is handled
    // while the store is down.
    let deduper = super::Deduper::new(Arc::new(DownStore), Config::keyed_by(KeySource::Payload));
    let ran = deduper
        .run(request("a"), |_r| async {
            Ok::<_, Error>(Outcome::Handled)
        })
        .await;
    assert_eq!(ran.unwrap(), Outcome::Handled);
}

/// `impl Store for $store` with the given methods, and the ones that
/// settle a lease passed to its `inner` store unchanged.
macro_rules! wrapping_store {
    ($store:ty { $($method:item)* }) => {
        #[async_trait::async_trait]
        impl Store for $store {
            $($method)*
            async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
                self.inner.complete(k, f).await
            }
            async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
                self.inner.mark_dead_lettered(k, f).await
            }
            async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
                self.inner.release(k, f, n).await
            }
        }
    };
}

/// A store whose renewals are delayed by `stall`: a renewer starved by a
/// blocking handler, or a store hiccup longer than the lease.
struct Stalled {
    inner: Arc<MemoryStore>,
    stall: Duration,
}

wrapping_store!(Stalled {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.inner.claim(k, o, l, r).await
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        tokio::time::sleep(self.stall).await;
        self.inner.renew(k, f, l).await
    }
});

/// Counts accepted and refused completions.
#[derive(Default)]
struct Completions {
    accepted: AtomicU32,
    refused: AtomicU32,
}

/// One worker: a layer over `store` with lease `lease`, whose handler runs
/// for `run`, ignoring cancellation, and reports whether its token fired.
fn worker(
    store: Arc<dyn Store>,
    lease: Duration,
    run: Duration,
    cancelled: Arc<AtomicU32>,
) -> impl Service<Request<String>, Response = Outcome, Error = Error, Future: Send> + Clone {
    let config = Config {
        lease,
        ..Config::keyed_by(KeySource::MessageId)
    };
    IdempotencyLayer::new(store, config).layer(service_fn(move |r: Request<String>| {
        let cancelled = Arc::clone(&cancelled);
        async move {
            tokio::time::sleep(run).await;
            if r.cancellation().is_cancelled() {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Error>(Outcome::Handled)
        }
    }))
}

/// Wraps `store` so completions are counted.
struct Counting {
    inner: Arc<dyn Store>,
    seen: Arc<Completions>,
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.inner.claim(k, o, l, r).await
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        self.inner.renew(k, f, l).await
    }
    async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        let done = self.inner.complete(k, f).await?;
        let counter = if done {
            &self.seen.accepted
        } else {
            &self.seen.refused
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(done)
    }
    async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.inner.mark_dead_lettered(k, f).await
    }
    async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
        self.inner.release(k, f, n).await
    }
}

/// Two workers and a handler that outlives its lease: worker A's renewals
/// stall past its lease, B takes the key over; A's run is cancelled and its
/// completion refused, B's completion accepted.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_cancels_its_run_and_its_completion_is_refused() {
    let shared = Arc::new(MemoryStore::default());
    let seen = Arc::new(Completions::default());
    let lease = Duration::from_millis(300);
    let stalled: Arc<dyn Store> = Arc::new(Stalled {
        inner: Arc::clone(&shared),
        stall: Duration::from_secs(5),
    });
    let (a_cancelled, b_cancelled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let a = worker(
        Arc::new(Counting {
            inner: stalled,
            seen: Arc::clone(&seen),
        }),
        lease,
        Duration::from_secs(1),
        Arc::clone(&a_cancelled),
    );
    let b = worker(
        Arc::new(Counting {
            inner: shared,
            seen: Arc::clone(&seen),
        }),
        lease,
        Duration::from_millis(100),
        Arc::clone(&b_cancelled),
    );
    let first = tokio::spawn(a.oneshot(request("x")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.oneshot(request("x")).await.unwrap(), Outcome::Handled);
    assert_eq!(first.await.unwrap().unwrap(), Outcome::Handled);
    assert_eq!(
        a_cancelled.load(Ordering::SeqCst),
        1,
        "the run whose lease was lost saw its token fire"
    );
    assert_eq!(b_cancelled.load(Ordering::SeqCst), 0);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "one completion");
    assert_eq!(seen.refused.load(Ordering::SeqCst), 1, "one refusal");
}

/// A store that refuses every renewal, as after a takeover.
struct RefusesRenewals(MemoryStore);

#[async_trait::async_trait]
impl Store for RefusesRenewals {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.0.claim(k, o, l, r).await
    }
    async fn renew(&self, _: &Key, _: Fence, _: Duration) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.0.complete(k, f).await
    }
    async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.0.mark_dead_lettered(k, f).await
    }
    async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
        self.0.release(k, f, n).await
    }
}

/// A renewal the store refuses (the lease was taken over) cancels the run
/// at the next renewal turn.
#[tokio::test(start_paused = true)]
async fn a_refused_renewal_cancels_the_run() {
    let lease = Duration::from_millis(300);
    let config = Config {
        lease,
        ..Config::keyed_by(KeySource::MessageId)
    };
    let store = Arc::new(RefusesRenewals(MemoryStore::default()));
    let svc =
        IdempotencyLayer::new(store, config).layer(service_fn(|r: Request<String>| async move {
            r.cancellation().cancelled().await;
            Err::<Outcome, _>(Error::Shutdown)
        }));
    let run = tokio::time::timeout(lease / 2, svc.oneshot(request("a"))).await;
    assert!(
        matches!(run, Ok(Err(Error::Shutdown))),
        "the run was cancelled at the first refused renewal: {run:?}"
    );
}

/// Seeds `key` as a run that crashed `times` times: leases taken and never released.
async fn crashed_before(store: &MemoryStore, key: &Key, times: u32) {
    let short = Duration::from_millis(5);
    for _ in 0..times {
        store.claim(key, "ghost", short, 0).await.unwrap();
        tokio::time::sleep(short * 2).await;
    }
}

/// A suspect waits until nothing else is in flight, and nothing starts beside it.
#[tokio::test]
async fn a_suspect_runs_alone() {
    let store = Arc::new(MemoryStore::default());
    crashed_before(&store, &stored("id-s"), 1).await;
    let running = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(Mutex::new(Vec::new()));
    let (r, o) = (Arc::clone(&running), Arc::clone(&overlaps));
    let svc = IdempotencyLayer::new(store, Config::keyed_by(KeySource::MessageId)).layer(
        service_fn(move |req: Request<String>| {
            let (r, o) = (Arc::clone(&r), Arc::clone(&o));
            async move {
                let suspect = req.extensions.get::<Suspect>().is_some();
                let before = r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let after = r.fetch_sub(1, Ordering::SeqCst);
                o.lock().unwrap().push((
                    req.message().meta.message_id.clone(),
                    suspect,
                    before,
                    after,
                ));
                Ok::<_, Error>(Outcome::Handled)
            }
        }),
    );
    let mut runs = tokio::task::JoinSet::new();
    for (i, body) in ["n1", "n2", "s", "n3", "n4"].into_iter().enumerate() {
        let svc = svc.clone();
        runs.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            svc.oneshot(request(body)).await
        });
    }
    while let Some(done) = runs.join_next().await {
        assert_eq!(done.unwrap().unwrap(), Outcome::Handled);
    }
    let seen = overlaps.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    let suspect = seen.iter().find(|(id, ..)| id == "id-s").unwrap();
    assert!(suspect.1, "marked a suspect");
    assert_eq!(
        (suspect.2, suspect.3),
        (0, 1),
        "nothing ran beside it: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, s, before, _)| !s && *before > 0),
        "the others still run concurrently: {seen:?}"
    );
}

/// A released lease never counts, a crashed one does; once the attempts
/// are spent the suspect is dead-lettered as `crashed` without running.
#[tokio::test]
async fn a_message_that_keeps_crashing_is_dead_lettered_as_crashed_without_running() {
    use crate::memory::MemoryBroker;
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryStore::default());
    // retries(1): two attempts; both crashed.
    crashed_before(&store, &stored_in("crashy", "id-boom"), 2).await;
    let mut m = Message::new("boom").with_message_id("id-boom");
    m.meta.source = "orders".into();
    broker.publish_now("crashy", m).unwrap();
    broker
        .publish_now("crashy", Message::new("fine").with_message_id("id-fine"))
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let stack = crate::stack::StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .retry(crate::retry::RetryPolicy::retries(1))
        .idempotency(store, KeySource::MessageId)
        .build(crate::handler::handler_fn(
            move |_b: String, _c: crate::context::Context| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), crate::error::HandlerError>(()) }
            },
        ));
    let summary = crate::runner::Runner::new(broker.consume("crashy", 4).until_drained(), stack)
        .run()
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the other message ran"
    );
    assert_eq!((summary.handled, summary.dead_lettered), (1, 1));
    let dlq = broker.peek(&crate::memory::dlq_name("crashy"));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("crashed"));
    assert_eq!(dlq[0].header(wire::MESSAGE_ID), Some("id-boom"));
}

/// A suspect waiting for its turn holds no lease: if the run ahead of it
/// kills the process, its own count does not grow.
#[tokio::test]
async fn a_waiting_suspect_holds_no_lease() {
    let store = Arc::new(MemoryStore::default());
    crashed_before(&store, &stored("id-s2"), 1).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let (rel, sta) = (Arc::clone(&release), Arc::clone(&started));
    let svc = IdempotencyLayer::new(store.clone(), Config::keyed_by(KeySource::MessageId)).layer(
        service_fn(move |req: Request<String>| {
            let (rel, sta) = (Arc::clone(&rel), Arc::clone(&sta));
            async move {
                if req.message().meta.message_id == "id-n1" {
                    sta.notify_one();
                    rel.notified().await;
                }
                Ok::<_, Error>(Outcome::Handled)
            }
        }),
    );
    let first = tokio::spawn(svc.clone().oneshot(request("n1")));
    started.notified().await;
    let second = tokio::spawn(svc.oneshot(request("s2")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished(), "the suspect waits until n1 is done");
    let probe = store
        .claim(&stored("id-s2"), "probe", Duration::from_secs(1), 0)
        .await
        .unwrap();
    let Claim::Acquired {
        fence,
        failed_runs: 1,
        crashed: false,
    } = probe
    else {
        panic!("the waiting suspect must hold no lease (its count stays 1): {probe:?}");
    };
    store.release(&stored("id-s2"), fence, None).await.unwrap();
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), Outcome::Handled);
    assert_eq!(second.await.unwrap().unwrap(), Outcome::Handled);
}

/// A worker whose DLQ write fails leaves the letter pending in the store; a
/// second worker (new layers, its own in-process table) sharing the store
/// writes that letter without running the handler.
#[tokio::test]
async fn a_pending_letter_is_written_by_another_worker_without_running_the_handler() {
    use crate::dead_letter::DeadLetterLayer;
    use crate::testing::RecordingSink;

    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let calls = Arc::new(AtomicU32::new(0));
    let worker = |sink: RecordingSink, text: &'static str, kind: ErrorKind| {
        let calls = calls.clone();
        IdempotencyLayer::new(store.clone(), Config::keyed_by(KeySource::MessageId)).layer(
            DeadLetterLayer::new(Arc::new(sink)).layer(service_fn(move |_r: Request<String>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    Err::<Outcome, _>(Error::Failed(crate::error::Failure {
                        kind,
                        message: text.into(),
                        attempts: 2,
                        first_failure: SystemTime::now(),
                        last_failure: SystemTime::now(),
                    }))
                }
            })),
        )
    };
    let down = RecordingSink::default();
    down.failing.store(true, Ordering::SeqCst);
    let first = worker(down, "deadline of 250ms passed", ErrorKind::Timeout);
    assert!(matches!(
        first.oneshot(request("a")).await,
        Err(Error::DeadLetter { .. })
    ));
    let up = RecordingSink::default();
    let second = worker(up.clone(), "another failure", ErrorKind::Panic);
    assert_eq!(
        second.oneshot(request("a")).await.unwrap(),
        Outcome::DeadLettered {
            kind: ErrorKind::Timeout
        }
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler did not run again"
    );
    let taken = up.taken();
    assert_eq!(taken.len(), 1);
    let letter = &taken[0].0;
    assert_eq!(letter.header(wire::ERROR_KIND), Some("timeout"));
    assert_eq!(letter.header(wire::ERROR), Some("deadline of 250ms passed"));
    assert_eq!(letter.header(wire::ATTEMPT), Some("2"));
    assert!(matches!(
        store
            .claim(&stored("id-a"), "x", Duration::from_secs(1), 0)
            .await
            .unwrap(),
        Claim::DeadLettered
    ));
}

/// The store keeps at most [`MAX_LETTER_TEXT`] bytes of a pending letter's
/// error text, cut at a character boundary, as the letter's header would.
#[tokio::test]
async fn a_pending_letter_keeps_a_bounded_error_text() {
    use crate::dead_letter::DeadLetterLayer;
    use crate::testing::RecordingSink;

    let store = Arc::new(MemoryStore::default());
    let sink = RecordingSink::default();
    sink.failing.store(true, Ordering::SeqCst);
    let long = "é".repeat(3000);
    let failure = crate::error::Failure {
        kind: ErrorKind::Permanent,
        message: long.clone(),
        attempts: 1,
        first_failure: SystemTime::now(),
        last_failure: SystemTime::now(),
    };
    let svc = IdempotencyLayer::new(store.clone(), Config::keyed_by(KeySource::MessageId)).layer(
        DeadLetterLayer::new(Arc::new(sink)).layer(service_fn(move |_r: Request<String>| {
            let failure = failure.clone();
            async move { Err::<Outcome, _>(Error::Failed(failure)) }
        })),
    );
    assert!(svc.oneshot(request("a")).await.is_err());
    let claim = store
        .claim(&stored("id-a"), "x", Duration::from_secs(1), 0)
        .await
        .unwrap();
    let Claim::LetterPending { letter, .. } = claim else {
        panic!("expected a pending letter, got {claim:?}");
    };
    assert_eq!(letter.message, wire::truncate(&long, MAX_LETTER_TEXT));
    assert!(letter.message.len() <= MAX_LETTER_TEXT && letter.message.len() > 1000);
}

/// A store whose completion is written at once but answered `stall` later,
/// as a slow round trip (or a batch) would: a renewal turn falls in between.
struct SlowCompletion {
    inner: MemoryStore,
    stall: Duration,
}

#[async_trait::async_trait]
impl Store for SlowCompletion {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.inner.claim(k, o, l, r).await
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        self.inner.renew(k, f, l).await
    }
    async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        let done = self.inner.complete(k, f).await;
        tokio::time::sleep(self.stall).await;
        done
    }
    async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.inner.mark_dead_lettered(k, f).await
    }
    async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
        self.inner.release(k, f, n).await
    }
}

/// A renewal the store refuses because the run's own completion was written
/// just before it is not a lost lease: the run's token does not fire, and
/// the message is handled once (the cluster suite logged bursts of "lease
/// lost" warnings for runs that had completed, under a slow store).
#[tokio::test(start_paused = true)]
async fn a_renewal_refused_after_the_completion_was_written_is_not_a_lost_lease() {
    let lease = Duration::from_millis(300);
    let config = Config {
        lease,
        ..Config::keyed_by(KeySource::MessageId)
    };
    let store = Arc::new(SlowCompletion {
        inner: MemoryStore::default(),
        stall: lease,
    });
    let token = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&token);
    let svc = IdempotencyLayer::new(Arc::clone(&store) as Arc<dyn Store>, config).layer(
        service_fn(move |r: Request<String>| {
            *seen.lock().unwrap() = Some(r.cancellation().clone());
            async { Ok::<_, Error>(Outcome::Handled) }
        }),
    );
    let outcome = svc.clone().oneshot(request("a")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    let token = token.lock().unwrap().take().expect("the handler ran");
    assert!(
        !token.is_cancelled(),
        "a renewal after the completion cancelled a finished run"
    );
    // Written once: a redelivery is a duplicate.
    let again = svc.oneshot(request("a")).await;
    assert!(matches!(again, Ok(Outcome::Duplicate)), "{again:?}");
}

/// A `MemoryStore` that records the owner names it is asked to claim for,
/// and says whether it keeps them.
struct Owners {
    inner: MemoryStore,
    keeps: bool,
    seen: Mutex<Vec<String>>,
}

wrapping_store!(Owners {
    async fn claim(&self, k: &Key, owner: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.seen.lock().unwrap().push(owner.to_owned());
        self.inner.claim(k, owner, l, r).await
    }
    fn claim_now(
        &self,
        k: &Key,
        owner: &str,
        l: Duration,
        r: u32,
    ) -> Option<Result<Claim, StoreError>> {
        self.seen.lock().unwrap().push(owner.to_owned());
        self.inner.claim_now(k, owner, l, r)
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        self.inner.renew(k, f, l).await
    }
    fn keeps_owner(&self) -> bool {
        self.keeps
    }
});

#[tokio::test]
async fn a_store_that_keeps_owners_gets_a_name_per_claim_one_that_does_not_gets_none() {
    assert!(!MemoryStore::default().keeps_owner());
    for keeps in [true, false] {
        let store = Arc::new(Owners {
            inner: MemoryStore::default(),
            keeps,
            seen: Mutex::default(),
        });
        let svc = stack(store.clone(), Arc::default(), handled());
        for id in ["a", "b"] {
            assert_eq!(
                svc.clone().oneshot(request(id)).await.unwrap(),
                Outcome::Handled
            );
        }
        let seen = store.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        if keeps {
            assert!(seen.iter().all(|o| !o.is_empty()), "{seen:?}");
            assert_ne!(seen[0], seen[1], "a name per claim");
        } else {
            assert_eq!(seen, ["", ""]);
        }
    }
}
