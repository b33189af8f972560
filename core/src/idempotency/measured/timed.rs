//! [`Timed`]: the store as a message's own future calls it, each call timed
//! with no allocation of its own.

use std::time::{Duration, Instant};

use super::StoreOps;
use crate::error::Failure;
use crate::error::StoreError;
use crate::idempotency::{Claim, Fence, Key as StoreKey, Layout, Store};

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

    pub(crate) async fn mark_dead_lettered(
        &self,
        key: &StoreKey,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        let result = self.store.mark_dead_lettered(key, fence).await;
        self.ops.mark_dead_lettered.result(start, result)
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

    pub(crate) async fn release_with_letter(
        &self,
        key: &StoreKey,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let start = Instant::now();
        let result = self.store.release_with_letter(key, fence, letter).await;
        self.ops.release_with_letter.result(start, result)
    }

    pub(crate) async fn layout(&self) -> Result<Layout, StoreError> {
        let start = Instant::now();
        let result = self.store.layout().await;
        self.ops.layout.result(start, result)
    }
}
