//! [`Measured`]: a [`Store`] wrapper that times each call, for the
//! background work (lease renewal, a release after a dropped run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::StoreOps;
use crate::error::{Failure, StoreError};
use crate::idempotency::{Claim, ClaimOf, Fence, Held, Key as StoreKey, Layout, Store};
use crate::metrics::MetricLabels;

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

    async fn mark_dead_lettered(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops
            .mark_dead_lettered
            .result(start, self.inner.mark_dead_lettered(key, fence).await)
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

    async fn release_with_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        self.ops.release_with_letter.result(
            start,
            self.inner.release_with_letter(key, fence, letter).await,
        )
    }

    fn storage_key(&self, key: &StoreKey) -> StoreKey {
        self.inner.storage_key(key)
    }

    fn remote(&self) -> bool {
        self.inner.remote()
    }

    fn keeps_owner(&self) -> bool {
        self.inner.keeps_owner()
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
