//! [`HeldMarks`]: a message's idempotency marks, waiting for its source's
//! commit (see [`transaction`](crate::transaction)).

use std::sync::Arc;

use smallvec::SmallVec;

use super::guard::LeaseGuard;
use super::{Fence, Key, Store};
use crate::error::StoreError;
use crate::outcome::Outcome;

/// What the marks record once the commit returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// `completed` (handled, or settled for good without running).
    Complete,
    /// `dead_lettered`.
    DeadLetter,
    /// Released, recording this many failed runs (a deferred message).
    Release(Option<u32>),
}

impl Mark {
    /// The mark a result leaves after the commit, if it waits for one: a
    /// duplicate and every error are settled at once (they produce nothing).
    fn after_commit(result: &Result<Outcome, crate::error::Error>) -> Option<Mark> {
        match result {
            Ok(Outcome::Handled | Outcome::Discarded { .. }) => Some(Mark::Complete),
            Ok(Outcome::DeadLettered { .. }) => Some(Mark::DeadLetter),
            Ok(Outcome::Deferred { attempt, .. }) => {
                Some(Mark::Release(Some(attempt.saturating_sub(1))))
            }
            Ok(Outcome::Duplicate) | Err(_) => None,
        }
    }
}

/// Marks that wait for a commit, before their guards join them.
pub(super) struct Waiting {
    mark: Mark,
    runtime: tokio::runtime::Handle,
}

/// One message's idempotency marks (its leases still held and renewed),
/// handed to its source's [`Transaction`](crate::transaction::Transaction)
/// to be written only after the commit that covers the message.
///
/// [`write`](HeldMarks::write) records them; dropping them instead (an
/// aborted or fenced transaction, a revoked partition) releases the leases
/// without counting a failed run, from any thread.
pub struct HeldMarks {
    store: Arc<dyn Store>,
    guards: SmallVec<[LeaseGuard; 2]>,
    mark: Mark,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HeldMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldMarks")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("mark", &self.mark)
            .finish()
    }
}

impl HeldMarks {
    /// The marks `result` leaves, if they wait for a commit (a duplicate
    /// and every error are settled at once: they produce nothing).
    pub(super) fn waiting(result: &Result<Outcome, crate::error::Error>) -> Option<Waiting> {
        Some(Waiting {
            mark: Mark::after_commit(result)?,
            runtime: tokio::runtime::Handle::try_current().ok()?,
        })
    }

    /// `waiting` marks on `guards`' keys.
    pub(super) fn new(
        store: &Arc<dyn Store>,
        guards: SmallVec<[LeaseGuard; 2]>,
        Waiting { mark, runtime }: Waiting,
    ) -> Self {
        HeldMarks {
            store: Arc::clone(store),
            guards,
            mark,
            runtime,
        }
    }

    /// The keys (as stored) whose marks these are.
    pub fn keys(&self) -> impl Iterator<Item = (&Key, Fence)> {
        self.guards.iter().map(|g| (g.key(), g.fence()))
    }

    /// True when the marks make the message `completed` (it was handled).
    pub fn completes(&self) -> bool {
        self.mark == Mark::Complete
    }

    /// Writes the marks (call it once the commit returned). A completion
    /// the store does not take now is retried in the background within the
    /// lease; any other failure is logged and returned (the lease then
    /// expires by itself).
    pub async fn write(mut self) -> Result<(), StoreError> {
        let mut first_error = None;
        for guard in std::mem::take(&mut self.guards) {
            guard.settling();
            let (key, fence) = (guard.key(), guard.fence());
            let written = match self.mark {
                Mark::Complete => self.store.complete(key, fence).await.map(drop),
                Mark::DeadLetter => self.store.mark_dead_lettered(key, fence).await.map(drop),
                Mark::Release(failed) => self.store.release(key, fence, failed).await,
            };
            match written {
                Ok(()) => guard.finish(),
                Err(error) if self.mark == Mark::Complete => {
                    guard.complete_later();
                    first_error.get_or_insert(error);
                }
                Err(error) => {
                    tracing::warn!(%error, key = %guard.key(), "could not record the key's state after the commit; its lease expires by itself");
                    guard.finish();
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`write`](Self::write) on the runtime the marks came from (for a
    /// source that commits on a thread of its own); failures are logged.
    pub fn write_in_background(self) {
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            if let Err(error) = self.write().await {
                tracing::debug!(%error, "an idempotency mark after the commit was not written at once");
            }
        });
    }
}

impl Drop for HeldMarks {
    fn drop(&mut self) {
        // Dropped unwritten: the guards release their leases (without
        // counting) on the runtime they came from, wherever this runs.
        if !self.guards.is_empty() {
            let _runtime = self.runtime.enter();
            self.guards.clear();
        }
    }
}
