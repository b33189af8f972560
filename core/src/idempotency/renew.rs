use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{Key, Store};

/// Renews every lease a layer holds, from one background task, every lease/3.
///
/// One task per layer instead of a timer per message: a message's
/// [`LeaseGuard`](super::guard::LeaseGuard) registers its lease on the way in
/// and removes it on the way out.
pub(crate) struct Renewer {
    leases: Arc<Mutex<Leases>>,
    next: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The held leases by id (foldhash: an insert and a removal per message).
type Leases = HashMap<u64, Arc<Lease>, foldhash::fast::RandomState>;

/// A held lease: the key and the owner that holds it.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) key: Key,
    pub(crate) owner: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Renewer {
    pub(crate) fn new() -> Self {
        Renewer {
            leases: Arc::new(Mutex::new(Leases::default())),
            next: AtomicU64::new(0),
            task: Mutex::new(None),
        }
    }

    /// Registers a lease for renewal; returns its id for [`Renewer::unregister`].
    pub(crate) fn register(
        &self,
        store: &Arc<dyn Store>,
        duration: Duration,
        lease: Arc<Lease>,
    ) -> u64 {
        {
            // (Re)start the task if it is not running: the runtime that ran it
            // may be gone (a stack shared across runtimes).
            let mut task = lock(&self.task);
            if task
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                *task = Some(spawn(
                    Arc::downgrade(&self.leases),
                    Arc::clone(store),
                    duration,
                ));
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.leases).insert(id, lease);
        id
    }

    /// Stops renewing the lease `id`.
    pub(crate) fn unregister(&self, id: u64) {
        lock(&self.leases).remove(&id);
    }
}

fn spawn(
    leases: Weak<Mutex<Leases>>,
    store: Arc<dyn Store>,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    let period = (lease / 3).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(leases) = leases.upgrade() else {
                return;
            };
            let held: Vec<Arc<Lease>> = lock(&leases).values().cloned().collect();
            drop(leases);
            // Concurrently, each bounded by the period: one slow renewal must
            // not let the other leases expire.
            let renewals = held.iter().map(|held| {
                let (key, owner) = (&held.key, &held.owner);
                let store = &store;
                async move {
                    match tokio::time::timeout(period, store.renew(key, owner, lease)).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => tracing::debug!(%key, "lease gone at renewal (finished, or taken over after expiry)"),
                        Ok(Err(error)) => tracing::warn!(%error, %key, "lease renewal failed"),
                        Err(_) => tracing::warn!(%key, "lease renewal timed out"),
                    }
                }
            });
            futures::future::join_all(renewals).await;
        }
    })
}
