//! [`Measured`]: a [`Store`] that times every call and counts its errors.
//!
//! The idempotency layer wraps the store it is given in one, so every store
//! (memory, Redis, PostgreSQL, a user's own) is measured the same way:
//! `backstop_store_duration_seconds{op}` and `backstop_store_errors_total{op}`,
//! `op` named after the [`Store`] method. A batch (`claim_many`, …) is one
//! call, timed once; each of its failed items counts one error. The keys
//! are built at compile time: recording one costs neither an allocation
//! nor a hash.

use std::time::{Duration, Instant};

use metrics::{Key, Label, Level, Metadata};

use super::{Claim, ClaimOf, Fence, Held, Key as StoreKey, Layout, Store};
use crate::metrics::{STORE_DURATION, STORE_ERRORS};
use crate::{Failure, StoreError};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The duration and error keys of one store operation.
struct OpKeys {
    duration: Key,
    errors: Key,
}

macro_rules! op_keys {
    ($($name:ident => $label:literal),* $(,)?) => {
        $(
            static $name: OpKeys = {
                static LABELS: [Label; 1] = [Label::from_static_parts("op", $label)];
                OpKeys {
                    duration: Key::from_static_parts(STORE_DURATION, &LABELS),
                    errors: Key::from_static_parts(STORE_ERRORS, &LABELS),
                }
            };
        )*
    };
}

op_keys!(
    CLAIM => "claim",
    RENEW => "renew",
    COMPLETE => "complete",
    DEAD_LETTER => "dead_letter",
    RELEASE => "release",
    DEFER_LETTER => "defer_letter",
    LAYOUT => "layout",
    CLAIM_MANY => "claim_many",
    RENEW_MANY => "renew_many",
    COMPLETE_MANY => "complete_many",
);

impl OpKeys {
    /// Records one call that started at `start` and had `errors` failures.
    fn record(&self, start: Instant, errors: u64) {
        let seconds = start.elapsed().as_secs_f64();
        metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(&self.duration, &METADATA)
                .record(seconds);
            if errors > 0 {
                recorder
                    .register_counter(&self.errors, &METADATA)
                    .increment(errors);
            }
        });
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
        let errors = results.iter().filter(|r| r.is_err()).count();
        self.record(start, u64::try_from(errors).unwrap_or(u64::MAX));
        results
    }
}

/// A [`Store`] that records each call's duration and errors:
/// `backstop_store_duration_seconds{op}` and `backstop_store_errors_total{op}`,
/// `op` named after the [`Store`] method. A batch is one call, timed once;
/// each of its failed items counts one error. The idempotency layer wraps
/// every store it is given in one.
#[derive(Debug)]
pub struct Measured<S: ?Sized> {
    inner: std::sync::Arc<S>,
}

impl<S: ?Sized> Measured<S> {
    /// Measures `inner`.
    pub const fn new(inner: std::sync::Arc<S>) -> Self {
        Measured { inner }
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
        CLAIM.result(start, self.inner.claim(key, owner, lease, replay).await)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        RENEW.result(start, self.inner.renew(key, fence, lease).await)
    }

    async fn complete(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        COMPLETE.result(start, self.inner.complete(key, fence).await)
    }

    async fn dead_letter(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        DEAD_LETTER.result(start, self.inner.dead_letter(key, fence).await)
    }

    async fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let start = Instant::now();
        RELEASE.result(start, self.inner.release(key, fence, failed_runs).await)
    }

    async fn defer_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        DEFER_LETTER.result(start, self.inner.defer_letter(key, fence, letter).await)
    }

    fn storage_key(&self, key: &StoreKey) -> StoreKey {
        self.inner.storage_key(key)
    }

    async fn layout(&self) -> Result<Layout, StoreError> {
        let start = Instant::now();
        LAYOUT.result(start, self.inner.layout().await)
    }

    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        let start = Instant::now();
        CLAIM_MANY.batch(start, self.inner.claim_many(claims, lease).await)
    }

    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        let start = Instant::now();
        RENEW_MANY.batch(start, self.inner.renew_many(held, lease).await)
    }

    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        let start = Instant::now();
        COMPLETE_MANY.batch(start, self.inner.complete_many(held).await)
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
                let up = Measured::new(std::sync::Arc::new(MemoryStore::default()));
                let fence = up
                    .claim(&key, "w", Duration::from_secs(5), 0)
                    .await
                    .unwrap()
                    .fence()
                    .unwrap();
                assert!(up.complete(&key, fence).await.unwrap());
                let down = Measured::new(std::sync::Arc::new(Down));
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
            None,
            "no failure, no count"
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
