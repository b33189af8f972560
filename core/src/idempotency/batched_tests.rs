//! The batcher's own logic over fake stores: answers in order, the bounds,
//! a caller that gives up, a failing batch, no task left behind, and the
//! stack's rule that a completion that fails is not acked.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::*;
use crate::idempotency::tests::DownStore;
use crate::idempotency::{Config, Deduper, KeySource, MemoryStore};

const LEASE: Duration = Duration::from_secs(30);

/// A [`MemoryStore`] whose batch calls wait for `gate` (one permit per
/// call) and record their sizes; its single-key calls are counted, as
/// they must not be made.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    gate: Option<Arc<Semaphore>>,
    sizes: Mutex<Vec<usize>>,
    singles: AtomicU32,
    /// Completions fail while set.
    down: AtomicBool,
}

impl Gated {
    fn behind_a_gate() -> (Arc<Self>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let store = Gated {
            gate: Some(Arc::clone(&gate)),
            ..Gated::default()
        };
        (Arc::new(store), gate)
    }

    async fn pass(&self, size: usize) {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("open gate").forget();
        }
        self.sizes.lock().unwrap().push(size);
    }

    fn sizes(&self) -> Vec<usize> {
        self.sizes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Store for Gated {
    async fn claim(&self, k: &Key, o: &str, l: Duration, r: u32) -> Result<Claim, StoreError> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(k, o, l, r).await
    }
    async fn renew(&self, k: &Key, f: Fence, l: Duration) -> Result<bool, StoreError> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(k, f, l).await
    }
    async fn complete(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(k, f).await
    }
    async fn mark_dead_lettered(&self, k: &Key, f: Fence) -> Result<bool, StoreError> {
        self.inner.mark_dead_lettered(k, f).await
    }
    async fn release(&self, k: &Key, f: Fence, n: Option<u32>) -> Result<(), StoreError> {
        self.inner.release(k, f, n).await
    }
    fn remote(&self) -> bool {
        true
    }
    async fn claim_many(&self, c: &[ClaimOf<'_>], l: Duration) -> Vec<Result<Claim, StoreError>> {
        self.pass(c.len()).await;
        self.inner.claim_many(c, l).await
    }
    async fn renew_many(&self, h: &[Held<'_>], l: Duration) -> Vec<Result<bool, StoreError>> {
        self.pass(h.len()).await;
        self.inner.renew_many(h, l).await
    }
    async fn complete_many(&self, h: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        self.pass(h.len()).await;
        if self.down.load(Ordering::SeqCst) {
            return h
                .iter()
                .map(|_| Err(StoreError::Backend("connection refused".into())))
                .collect();
        }
        self.inner.complete_many(h).await
    }
}

fn config(max_batch: usize, in_flight: usize) -> BatchConfig {
    BatchConfig {
        max_batch,
        in_flight,
    }
}

/// Lets every task that can run, run (the current-thread runtime).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn calls_that_wait_for_a_round_trip_go_out_together_each_answered_in_order() {
    let (store, gate) = Gated::behind_a_gate();
    let batched = Arc::new(Batched::new(Arc::clone(&store), config(8, 1)));
    let keys: Vec<Key> = (0..20).map(|i| Key::new(&format!("k{i}"))).collect();
    // One key taken before: its claim in the batch must find it busy.
    let taken = store
        .inner
        .claim(&keys[5], "other", LEASE, 0)
        .await
        .unwrap();
    assert!(taken.fence().is_some());
    gate.add_permits(100);
    let claims = join_all(
        keys.iter()
            .enumerate()
            .map(|(i, k)| batched.claim(k, if i == 5 { "late" } else { "w" }, LEASE, 0)),
    )
    .await;
    // The first call goes out alone; the 19 that waited behind it go out in
    // batches of at most 8 (16 calls wait at most: the others wait for room).
    let sizes = store.sizes();
    assert_eq!(sizes[0], 1, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
    assert!(sizes.len() <= 5, "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 20, "{sizes:?}");
    assert_eq!(store.singles.load(Ordering::SeqCst), 0, "only batches");
    let mut fences = Vec::new();
    for (i, claim) in claims.into_iter().enumerate() {
        let claim = claim.unwrap();
        if i == 5 {
            assert!(matches!(claim, Claim::Busy { .. }), "{claim:?}");
        } else {
            fences.push((i, claim.fence().expect("acquired")));
        }
    }
    // Each fence is its own key's: completing under it is accepted.
    let done = join_all(fences.iter().map(|(i, f)| batched.complete(&keys[*i], *f))).await;
    assert!(done.into_iter().all(|d| d.unwrap()));
    assert_eq!(
        batched.claim(&keys[7], "again", LEASE, 0).await.unwrap(),
        Claim::Completed
    );
}

#[tokio::test]
async fn no_more_than_in_flight_round_trips_go_out_at_once() {
    let (store, gate) = Gated::behind_a_gate();
    let batched = Arc::new(Batched::new(Arc::clone(&store), config(4, 2)));
    let keys: Vec<Key> = (0..10).map(|i| Key::new(&format!("k{i}"))).collect();
    let calls = tokio::spawn({
        let (batched, keys) = (Arc::clone(&batched), keys.clone());
        async move { join_all(keys.iter().map(|k| batched.claim(k, "w", LEASE, 0))).await }
    });
    settle().await;
    // Two round trips are out (one call each), the other eight wait.
    assert_eq!(lock(&batched.claims.shared.state).in_flight, 2);
    assert_eq!(lock(&batched.claims.shared.state).waiting.len(), 8);
    gate.add_permits(100);
    let claims = calls.await.unwrap();
    assert!(
        claims
            .iter()
            .all(|c| matches!(c, Ok(Claim::Acquired { .. })))
    );
    let mut sizes = store.sizes();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 1, 4, 4], "two alone, then two full batches");
    assert_eq!(lock(&batched.claims.shared.state).in_flight, 0);
}

#[tokio::test]
async fn a_caller_that_gives_up_is_left_out_and_breaks_nothing() {
    let (store, gate) = Gated::behind_a_gate();
    let batched = Arc::new(Batched::new(Arc::clone(&store), config(8, 1)));
    let (a, b, c) = (Key::new("a"), Key::new("b"), Key::new("c"));
    let first = tokio::spawn({
        let (batched, a) = (Arc::clone(&batched), a.clone());
        async move { batched.claim(&a, "w", LEASE, 0).await }
    });
    settle().await;
    // `b` waits behind the round trip in flight, then its caller gives up.
    let given_up = tokio::time::timeout(Duration::from_millis(1), batched.claim(&b, "w", LEASE, 0));
    assert!(given_up.await.is_err());
    let third = tokio::spawn({
        let (batched, c) = (Arc::clone(&batched), c.clone());
        async move { batched.claim(&c, "w", LEASE, 0).await }
    });
    settle().await;
    gate.add_permits(10);
    assert!(first.await.unwrap().unwrap().fence().is_some());
    assert!(third.await.unwrap().unwrap().fence().is_some());
    assert_eq!(store.sizes(), vec![1, 1], "`b` was never sent");
    let free = store.inner.claim(&b, "x", LEASE, 0).await.unwrap();
    assert!(matches!(free, Claim::Acquired { .. }), "{free:?}");
}

#[tokio::test]
async fn a_failed_batch_fails_each_of_its_callers() {
    let batched = Arc::new(Batched::new(Arc::new(DownStore), config(8, 1)));
    let keys: Vec<Key> = (0..5).map(|i| Key::new(&format!("k{i}"))).collect();
    let answers = join_all(keys.iter().map(|k| batched.complete(k, Fence(1)))).await;
    assert_eq!(answers.len(), 5);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(StoreError::Backend(_))))
    );
}

#[tokio::test]
async fn nothing_is_left_running_once_the_batches_are_answered() {
    let (store, gate) = Gated::behind_a_gate();
    gate.add_permits(100);
    let batched = Batched::new(Arc::clone(&store), config(8, 2));
    let keys: Vec<Key> = (0..30).map(|i| Key::new(&format!("k{i}"))).collect();
    let claims = join_all(keys.iter().map(|k| batched.claim(k, "w", LEASE, 0))).await;
    assert!(claims.iter().all(Result::is_ok));
    settle().await;
    drop(batched);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "no round trip holds the store"
    );
}

#[tokio::test(start_paused = true)]
async fn a_completion_that_fails_is_not_acked_and_is_written_once_the_store_answers() {
    let store = Arc::new(Gated::default());
    let deduper = Deduper::new(
        Arc::clone(&store) as Arc<dyn Store>,
        Config::keyed_by(KeySource::MessageId),
    );
    let runs = Arc::new(AtomicU32::new(0));
    let run = || {
        let runs = Arc::clone(&runs);
        deduper.run(crate::testing::request("a"), move |_r| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, crate::error::Error>(crate::outcome::Outcome::Handled)
        })
    };
    store.down.store(true, Ordering::SeqCst);
    let ran = run().await;
    assert!(matches!(ran, Err(crate::error::Error::Store(_))), "{ran:?}");
    assert_eq!(
        store.sizes(),
        vec![1, 1],
        "claimed and completed in batches"
    );
    // The redelivery while the store is down finds its key held.
    let busy = run().await;
    assert!(
        matches!(busy, Err(crate::error::Error::Busy { .. })),
        "{busy:?}"
    );
    // The completion is retried in the background and written once the
    // store answers: the next redelivery is a duplicate, not a second run.
    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(run().await.unwrap(), crate::outcome::Outcome::Duplicate);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn each_round_trip_is_timed_as_its_batch_and_its_size_recorded() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use crate::metrics::{STORE_BATCH_SIZE, STORE_DURATION};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (store, gate) = Gated::behind_a_gate();
            gate.add_permits(10);
            let batched = Batched::new(store, config(8, 1));
            let keys: Vec<Key> = (0..3).map(|i| Key::new(&format!("k{i}"))).collect();
            let claims = join_all(keys.iter().map(|k| batched.claim(k, "w", LEASE, 0))).await;
            assert!(claims.iter().all(Result::is_ok));
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let of = |name: &str| {
        snapshot
            .iter()
            .find(|(k, _, _, _)| {
                k.key().name() == name
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "op" && l.value() == "claim_many")
            })
            .map(|(_, _, _, v)| v)
    };
    let Some(DebugValue::Histogram(sizes)) = of(STORE_BATCH_SIZE) else {
        panic!("no batch sizes: {snapshot:?}");
    };
    let sizes: Vec<f64> = sizes.iter().map(|s| s.into_inner()).collect();
    assert_eq!(sizes, vec![1.0, 2.0], "one alone, then the two that waited");
    assert!(
        matches!(of(STORE_DURATION), Some(DebugValue::Histogram(h)) if h.len() == 2),
        "each round trip timed once"
    );
}

#[test]
fn calls_waiting_for_a_round_trip_that_is_dropped_fail_rather_than_hang() {
    let (store, _closed_gate) = Gated::behind_a_gate();
    let batched = Arc::new(Batched::new(store, config(8, 1)));
    let waiting = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let waiting = rt.block_on(async {
            let first = tokio::spawn({
                let batched = Arc::clone(&batched);
                async move { batched.claim(&Key::new("a"), "w", LEASE, 0).await }
            });
            settle().await;
            assert_eq!(lock(&batched.claims.shared.state).in_flight, 1);
            drop(first);
            // A call of another runtime waits behind the round trip out.
            let (answered, answer) = std::sync::mpsc::channel();
            let batched = Arc::clone(&batched);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let claim =
                    runtime.block_on(async { batched.claim(&Key::new("b"), "w", LEASE, 0).await });
                let _ = answered.send(claim);
            });
            answer
        });
        while lock(&batched.claims.shared.state).waiting.is_empty() {
            std::thread::yield_now();
        }
        // The runtime that ran the round trip shuts down with it.
        drop(rt);
        waiting
    };
    let answer = waiting
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting call is answered, not left hanging");
    assert!(matches!(answer, Err(StoreError::Backend(_))), "{answer:?}");
    assert_eq!(lock(&batched.claims.shared.state).in_flight, 0);
}
