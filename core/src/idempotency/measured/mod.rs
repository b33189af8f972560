//! Store metrics: every call timed and its failures counted by operation,
//! `backstop_store_duration_seconds{op}` and `backstop_store_errors_total{op}`
//! (plus the consumer's `source` and `group`), `op` named after the
//! [`Store`] method. A batch (`claim_many`, …) is one call, timed once; each
//! of its failed items counts one error.
//!
//! Two ways in, one set of keys ([`StoreOps`], built once per stack): the
//! per-message path calls the store through [`Timed`] (plain async methods,
//! inlined into the message's future: no allocation), the background work
//! (lease renewal, a release after a dropped run) through [`Measured`], a
//! [`Store`] wrapper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Key;

use super::{Claim, ClaimOf, Fence, Held, Key as StoreKey, Layout, Store};
use crate::metrics::{MetricLabels, STORE_BATCH_SIZE, STORE_DURATION, STORE_ERRORS};
use crate::{Failure, StoreError};

/// The duration and error keys of one store operation.
struct OpKeys {
    duration: Key,
    errors: Key,
}

impl OpKeys {
    fn new(labels: &MetricLabels, op: &str) -> Self {
        let keys = OpKeys {
            duration: labels.key(STORE_DURATION, &[("op", op)]),
            errors: labels.key(STORE_ERRORS, &[("op", op)]),
        };
        // Exported at 0 from the start, so the first failure is an increase.
        metrics::with_recorder(|recorder| {
            recorder
                .register_counter(&keys.errors, &crate::metrics::METADATA)
                .increment(0);
        });
        keys
    }

    /// Records one call that started at `start` and had `errors` failures.
    fn record(&self, start: Instant, errors: u64) {
        let seconds = start.elapsed().as_secs_f64();
        metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(&self.duration, &crate::metrics::METADATA)
                .record(seconds);
            if errors > 0 {
                recorder
                    .register_counter(&self.errors, &crate::metrics::METADATA)
                    .increment(errors);
            }
        });
    }

    /// Records one call answered at once (`call` is `None` when the store
    /// has no answer at once: nothing was called, nothing is recorded).
    fn now<T>(
        &self,
        call: impl FnOnce() -> Option<Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        let start = Instant::now();
        let result = call()?;
        Some(self.result(start, result))
    }

    /// Records one single-key call and hands its result on.
    fn result<T>(&self, start: Instant, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.record(start, u64::from(result.is_err()));
        result
    }

    /// Records one batch call and hands its results on.
    fn batch<T>(
        &self,
        start: Instant,
        results: Vec<Result<T, StoreError>>,
    ) -> Vec<Result<T, StoreError>> {
        self.record_batch(start, &results);
        results
    }

    /// Records one batch call that started at `start` and answered `results`.
    fn record_batch<T>(&self, start: Instant, results: &[Result<T, StoreError>]) {
        let errors = results.iter().filter(|r| r.is_err()).count();
        self.record(start, u64::try_from(errors).unwrap_or(u64::MAX));
    }
}

/// A batch operation that [`Batched`](super::Batched) sends for the
/// single-key calls it gathered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BatchOp {
    /// `claim_many`.
    Claim,
    /// `complete_many`.
    Complete,
}

/// The keys of every store operation of one consumer.
pub(crate) struct StoreOps {
    claim: OpKeys,
    renew: OpKeys,
    complete: OpKeys,
    dead_letter: OpKeys,
    release: OpKeys,
    defer_letter: OpKeys,
    layout: OpKeys,
    claim_many: OpKeys,
    renew_many: OpKeys,
    complete_many: OpKeys,
    /// `backstop_store_batch_size{op}` of `claim_many`, `complete_many`.
    batch_sizes: [Key; 2],
}

impl StoreOps {
    /// The keys of a consumer labelled `labels`.
    pub(crate) fn new(labels: &MetricLabels) -> Self {
        let op = |name| OpKeys::new(labels, name);
        StoreOps {
            claim: op("claim"),
            renew: op("renew"),
            complete: op("complete"),
            dead_letter: op("dead_letter"),
            release: op("release"),
            defer_letter: op("defer_letter"),
            layout: op("layout"),
            claim_many: op("claim_many"),
            renew_many: op("renew_many"),
            complete_many: op("complete_many"),
            batch_sizes: ["claim_many", "complete_many"]
                .map(|op| labels.key(STORE_BATCH_SIZE, &[("op", op)])),
        }
    }

    /// Records one batched round trip: its duration and failed items as
    /// its batch operation, and its size.
    pub(crate) fn round_trip<T>(
        &self,
        op: BatchOp,
        start: Instant,
        results: &[Result<T, StoreError>],
    ) {
        let (keys, size) = match op {
            BatchOp::Claim => (&self.claim_many, &self.batch_sizes[0]),
            BatchOp::Complete => (&self.complete_many, &self.batch_sizes[1]),
        };
        keys.record_batch(start, results);
        #[allow(clippy::cast_precision_loss)] // a batch is far below 2^52
        let n = results.len() as f64;
        metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(size, &crate::metrics::METADATA)
                .record(n);
        });
    }
}

impl std::fmt::Debug for StoreOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOps").finish_non_exhaustive()
    }
}

/// The store as a message's own future calls it: each call timed, with
/// no allocation of its own.
pub(crate) struct Timed<'a> {
    store: &'a dyn Store,
    ops: &'a StoreOps,
}

impl<'a> Timed<'a> {
    pub(crate) fn new(store: &'a dyn Store, ops: &'a StoreOps) -> Self {
        Timed { store, ops }
    }

    pub(crate) async fn claim(
        &self,
        key: &StoreKey,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let start = Instant::now();
        let result = match self.store.claim_now(key, owner, lease, replay) {
            Some(result) => result,
            None => self.store.claim(key, owner, lease, replay).await,
        };
        self.ops.claim.result(start, result)
    }

    pub(crate) async fn complete(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        let result = match self.store.complete_now(key, fence) {
            Some(result) => result,
            None => self.store.complete(key, fence).await,
        };
        self.ops.complete.result(start, result)
    }

    pub(crate) async fn dead_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        let result = self.store.dead_letter(key, fence).await;
        self.ops.dead_letter.result(start, result)
    }

    pub(crate) async fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let start = Instant::now();
        let result = self.store.release(key, fence, failed_runs).await;
        self.ops.release.result(start, result)
    }

    pub(crate) async fn defer_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        let result = self.store.defer_letter(key, fence, letter).await;
        self.ops.defer_letter.result(start, result)
    }

    pub(crate) async fn layout(&self) -> Result<Layout, StoreError> {
        let start = Instant::now();
        let result = self.store.layout().await;
        self.ops.layout.result(start, result)
    }
}

/// A [`Store`] that records each call's duration and errors (see the
/// [`idempotency`](crate::idempotency) module docs): what the idempotency layer's background work (lease
/// renewal, the release of a dropped run's lease) calls.
#[derive(Debug)]
pub struct Measured<S: ?Sized> {
    inner: Arc<S>,
    ops: Arc<StoreOps>,
}

impl<S: ?Sized> Measured<S> {
    /// Measures `inner`; its metrics carry empty `source` and `group` labels.
    pub fn new(inner: Arc<S>) -> Self {
        Self::labelled(inner, &MetricLabels::default())
    }

    /// Measures `inner`; its metrics carry `labels`.
    pub fn labelled(inner: Arc<S>, labels: &MetricLabels) -> Self {
        Measured {
            inner,
            ops: Arc::new(StoreOps::new(labels)),
        }
    }

    pub(crate) fn sharing(inner: Arc<S>, ops: Arc<StoreOps>) -> Self {
        Measured { inner, ops }
    }

    /// The measured store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Measured<S> {
    async fn claim(
        &self,
        key: &StoreKey,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let start = Instant::now();
        self.ops
            .claim
            .result(start, self.inner.claim(key, owner, lease, replay).await)
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Option<Result<Claim, StoreError>> {
        self.ops
            .claim
            .now(|| self.inner.claim_now(key, owner, lease, replay))
    }

    async fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops
            .renew
            .result(start, self.inner.renew(key, fence, lease).await)
    }

    async fn complete(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops
            .complete
            .result(start, self.inner.complete(key, fence).await)
    }

    fn complete_now(&self, key: &StoreKey, fence: Fence) -> Option<Result<bool, StoreError>> {
        self.ops
            .complete
            .now(|| self.inner.complete_now(key, fence))
    }

    async fn dead_letter(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops
            .dead_letter
            .result(start, self.inner.dead_letter(key, fence).await)
    }

    async fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let start = Instant::now();
        self.ops
            .release
            .result(start, self.inner.release(key, fence, failed_runs).await)
    }

    async fn defer_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops
            .defer_letter
            .result(start, self.inner.defer_letter(key, fence, letter).await)
    }

    fn storage_key(&self, key: &StoreKey) -> StoreKey {
        self.inner.storage_key(key)
    }

    fn remote(&self) -> bool {
        self.inner.remote()
    }

    async fn layout(&self) -> Result<Layout, StoreError> {
        let start = Instant::now();
        self.ops.layout.result(start, self.inner.layout().await)
    }

    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        let start = Instant::now();
        self.ops
            .claim_many
            .batch(start, self.inner.claim_many(claims, lease).await)
    }

    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        let start = Instant::now();
        self.ops
            .renew_many
            .batch(start, self.inner.renew_many(held, lease).await)
    }

    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        let start = Instant::now();
        self.ops
            .complete_many
            .batch(start, self.inner.complete_many(held).await)
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::idempotency::MemoryStore;
    use crate::idempotency::tests::DownStore as Down;

    fn value<'a>(
        snapshot: &'a [(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            DebugValue,
        )],
        name: &str,
        op: &str,
    ) -> Option<&'a DebugValue> {
        snapshot
            .iter()
            .find(|(k, _, _, _)| {
                k.key().name() == name
                    && k.key().labels().any(|l| l.key() == "op" && l.value() == op)
            })
            .map(|(_, _, _, v)| v)
    }

    #[test]
    fn every_call_is_timed_and_failures_are_counted_by_operation() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let key = StoreKey::new("k");
                let up = Measured::new(Arc::new(MemoryStore::default()));
                let fence = up
                    .claim(&key, "w", Duration::from_secs(5), 0)
                    .await
                    .unwrap()
                    .fence()
                    .unwrap();
                assert!(up.complete(&key, fence).await.unwrap());
                let down = Measured::new(Arc::new(Down));
                for _ in 0..3 {
                    assert!(
                        down.claim(&key, "w", Duration::from_secs(5), 0)
                            .await
                            .is_err()
                    );
                }
                let held = [Held { key: &key, fence }, Held { key: &key, fence }];
                assert_eq!(
                    down.renew_many(&held, Duration::from_secs(5)).await.len(),
                    2
                );
            });
        });
        let snapshot = snapshotter.snapshot().into_vec();
        assert!(
            matches!(value(&snapshot, STORE_DURATION, "claim"), Some(DebugValue::Histogram(h)) if h.len() == 4)
        );
        assert!(
            matches!(value(&snapshot, STORE_DURATION, "complete"), Some(DebugValue::Histogram(h)) if h.len() == 1)
        );
        assert_eq!(
            value(&snapshot, STORE_ERRORS, "claim"),
            Some(&DebugValue::Counter(3))
        );
        assert_eq!(
            value(&snapshot, STORE_ERRORS, "complete"),
            Some(&DebugValue::Counter(0)),
            "no failure: exported at 0"
        );
        assert!(
            matches!(value(&snapshot, STORE_DURATION, "renew_many"), Some(DebugValue::Histogram(h)) if h.len() == 1),
            "a batch is one call"
        );
        assert_eq!(
            value(&snapshot, STORE_ERRORS, "renew_many"),
            Some(&DebugValue::Counter(2)),
            "each failed item"
        );
    }
}
