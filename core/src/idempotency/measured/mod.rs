//! Store metrics: every call timed and its failures counted by operation,
//! `backstop_store_duration_seconds{op}` and `backstop_store_errors_total{op}`
//! (plus the consumer's `source` and `group`), `op` named after the
//! [`Store`](crate::idempotency::Store) method. A batch (`claim_many`, …) is one call, timed once; each
//! of its failed items counts one error. A call the store answers at once
//! (`claim_now`, `complete_now`: no I/O) is recorded as taking no time.
//!
//! Two ways in, one set of keys ([`StoreOps`], built once per stack): the
//! per-message path calls the store through [`Timed`] (plain async methods,
//! inlined into the message's future: no allocation), the background work
//! (lease renewal, a release after a dropped run) through [`Measured`], a
//! [`Store`](crate::idempotency::Store) wrapper.

#[cfg(test)]
mod tests;
mod timed;
mod wrapper;

pub(crate) use self::timed::Timed;
pub use self::wrapper::Measured;

use std::time::Instant;

use metrics::{Counter, Histogram};

use crate::error::StoreError;
use crate::metrics::{Handle, MetricLabels, STORE_BATCH_SIZE, STORE_DURATION, STORE_ERRORS};

/// The duration and error keys of one store operation.
struct OpKeys {
    duration: Handle<Histogram>,
    errors: Handle<Counter>,
}

impl OpKeys {
    fn new(labels: &MetricLabels, op: &str) -> Self {
        let errors = labels.key(STORE_ERRORS, &[("op", op)]);
        // Exported at 0 from the start, so the first failure is an increase.
        metrics::with_recorder(|recorder| {
            recorder
                .register_counter(&errors, &crate::metrics::METADATA)
                .increment(0);
        });
        OpKeys {
            duration: Handle::new(labels.key(STORE_DURATION, &[("op", op)])),
            errors: Handle::new(errors),
        }
    }

    /// Records one call that started at `start` and had `errors` failures.
    fn record(&self, start: Instant, errors: u64) {
        self.took(start.elapsed().as_secs_f64(), errors);
    }

    /// Records one call that took `seconds` and had `errors` failures.
    fn took(&self, seconds: f64, errors: u64) {
        self.duration.get().record(seconds);
        if errors > 0 {
            self.errors.get().increment(errors);
        }
    }

    /// Records one call answered at once (`call` is `None` when the store
    /// has no answer at once: nothing was called, nothing is recorded).
    /// Such an answer waited for no I/O (the in-memory store): it is
    /// recorded as taking no time, well under the smallest bucket, without
    /// reading the clock twice per call.
    fn now<T>(
        &self,
        call: impl FnOnce() -> Option<Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        let result = call()?;
        self.took(0.0, u64::from(result.is_err()));
        Some(result)
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
    mark_dead_lettered: OpKeys,
    release: OpKeys,
    release_with_letter: OpKeys,
    layout: OpKeys,
    claim_many: OpKeys,
    renew_many: OpKeys,
    complete_many: OpKeys,
    /// `backstop_store_batch_size{op}` of `claim_many`, `complete_many`.
    batch_sizes: [Handle<Histogram>; 2],
}

impl StoreOps {
    /// The keys of a consumer labelled `labels`.
    pub(crate) fn new(labels: &MetricLabels) -> Self {
        let op = |name| OpKeys::new(labels, name);
        StoreOps {
            claim: op("claim"),
            renew: op("renew"),
            complete: op("complete"),
            mark_dead_lettered: op("mark_dead_lettered"),
            release: op("release"),
            release_with_letter: op("release_with_letter"),
            layout: op("layout"),
            claim_many: op("claim_many"),
            renew_many: op("renew_many"),
            complete_many: op("complete_many"),
            batch_sizes: ["claim_many", "complete_many"]
                .map(|op| Handle::new(labels.key(STORE_BATCH_SIZE, &[("op", op)]))),
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
        size.get().record(n);
    }
}

impl std::fmt::Debug for StoreOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOps").finish_non_exhaustive()
    }
}
