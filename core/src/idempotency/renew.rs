use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Fence, Held, Key, LeaseToken, Store};
use crate::cancellation::{Tripwire, Wired};
use crate::context::Holds;

/// Renews every lease a layer holds, from one background task, every
/// lease/3, with one [`Store::renew_many`] per turn.
///
/// One task per layer instead of a timer per message: a message's
/// [`LeaseGuard`](super::guard::LeaseGuard) registers its lease on the way in
/// and removes it on the way out. A lease the store refuses to renew (taken
/// over, or gone), or one that could not be renewed for a whole lease
/// (the store is unreachable), is lost: its cancellation token fires, so
/// the run it fences stops instead of running beside its successor.
pub(crate) struct Renewer {
    leases: Arc<Mutex<Leases>>,
    /// True while the task runs: set by the register that spawns it (the
    /// one that swapped it from false), cleared when its future ends or is
    /// dropped (its runtime shut down), so a register reads one flag
    /// instead of locking to ask the task.
    running: Arc<AtomicBool>,
}

/// The held leases, in slots: a lease's id is its slot, and a freed slot
/// is taken by the next lease (a push and a pop per message, no hashing).
/// It has as many slots as leases were ever held at once.
#[derive(Debug, Default)]
struct Leases {
    slots: Vec<Option<Arc<Lease>>>,
    /// The empty slots.
    free: Vec<usize>,
}

impl Leases {
    /// Holds `lease`; returns its id.
    fn insert(&mut self, lease: Arc<Lease>) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(lease);
                id
            }
            None => {
                self.slots.push(Some(lease));
                self.slots.len() - 1
            }
        }
    }

    /// Lets the lease `id` go (once; an id already free is left alone).
    fn remove(&mut self, id: usize) {
        if let Some(slot) = self.slots.get_mut(id)
            && slot.take().is_some()
        {
            self.free.push(id);
        }
    }

    /// Every lease held.
    fn held(&self) -> Vec<Arc<Lease>> {
        self.slots.iter().flatten().cloned().collect()
    }
}

/// A held lease: the key, its fencing token, and the tripwire that cancels
/// its run (one allocation for both: the run's cancellation holds the
/// lease), and the [`LeaseToken`] of its run's request (the request's
/// extensions hold the lease for it: one allocation for that too).
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) key: Key,
    pub(crate) fence: Fence,
    /// What the run's request shows as its [`LeaseToken`] (the key's
    /// lease's; `None` for a legacy key's lease during a migration).
    pub(crate) token: Option<LeaseToken>,
    pub(crate) lost: Tripwire,
    /// When the store last confirmed the lease (at the claim, then each renewal).
    pub(crate) confirmed: Mutex<Instant>,
    /// The run is over and its result is being written: a renewal the
    /// store refuses now raced that write (the key is completed, say), so
    /// the lease is not reported lost.
    pub(crate) settling: AtomicBool,
}

impl Wired for Lease {
    fn tripwire(&self) -> &Tripwire {
        &self.lost
    }
}

impl Holds for Lease {
    fn held(&self, id: TypeId) -> Option<&(dyn Any + Send + Sync)> {
        let token = self
            .token
            .as_ref()
            .filter(|_| id == TypeId::of::<LeaseToken>())?;
        Some(token)
    }

    fn detach(&self, id: TypeId) -> Option<Arc<dyn Any + Send + Sync>> {
        let token = self
            .token
            .as_ref()
            .filter(|_| id == TypeId::of::<LeaseToken>())?;
        Some(Arc::new(token.clone()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Renewer {
    pub(crate) fn new() -> Self {
        Renewer {
            leases: Arc::new(Mutex::new(Leases::default())),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Registers a lease for renewal; returns its id for [`Renewer::unregister`].
    pub(crate) fn register(
        &self,
        store: &Arc<dyn Store>,
        duration: Duration,
        lease: Arc<Lease>,
    ) -> usize {
        // (Re)start the task if it is not running: the runtime that ran it
        // may be gone (a stack shared across runtimes). Only the register
        // that swaps the flag spawns it.
        if !self.running.load(Ordering::Acquire)
            && self
                .running
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Made before the spawn: if the spawn fails (no runtime), its
            // drop clears the flag again.
            let running = Running(Arc::clone(&self.running));
            spawn(
                Arc::downgrade(&self.leases),
                Arc::clone(store),
                duration,
                running,
            );
        }
        lock(&self.leases).insert(lease)
    }

    /// Stops renewing the lease `id`.
    pub(crate) fn unregister(&self, id: usize) {
        lock(&self.leases).remove(id);
    }
}

/// Clears the renewer's `running` flag when the task's future ends or is
/// dropped.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn spawn(leases: Weak<Mutex<Leases>>, store: Arc<dyn Store>, lease: Duration, running: Running) {
    let period = (lease / 3).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let _running = running;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(leases) = leases.upgrade() else {
                return;
            };
            let held = lock(&leases).held();
            drop(leases);
            if held.is_empty() {
                continue;
            }
            renew_all(&*store, &held, lease, period).await;
        }
    });
}

/// One renewal turn: one batch, bounded by `period` so a slow store cannot
/// let the leases run out unnoticed.
async fn renew_all(store: &dyn Store, held: &[Arc<Lease>], lease: Duration, period: Duration) {
    let batch: Vec<Held<'_>> = held
        .iter()
        .map(|l| Held {
            key: &l.key,
            fence: l.fence,
        })
        .collect();
    let sent = Instant::now();
    let answers = tokio::time::timeout(period, store.renew_many(&batch, lease)).await;
    for (i, held) in held.iter().enumerate() {
        let key = &held.key;
        let answer = match &answers {
            Ok(answers) => answers.get(i),
            Err(_) => None,
        };
        match answer {
            Some(Ok(true)) => *lock(&held.confirmed) = sent,
            // Settled meanwhile: the renewal came after the result was written.
            Some(Ok(false)) if held.settling.load(Ordering::Acquire) => {
                tracing::trace!(%key, "renewal refused after the run ended; its result is being written");
            }
            Some(Ok(false)) => {
                tracing::warn!(%key, fence = %held.fence, "lease lost (taken over after expiry, or gone); cancelling its run");
                held.lost.fire();
            }
            Some(Err(error)) => {
                tracing::warn!(%error, %key, "lease renewal failed");
                cancel_if_expired(held, lease);
            }
            None => {
                tracing::warn!(%key, "lease renewal timed out");
                cancel_if_expired(held, lease);
            }
        }
    }
}

/// A lease the store has not confirmed for a whole lease may be taken over
/// by now: its run is cancelled.
fn cancel_if_expired(held: &Lease, lease: Duration) {
    if lock(&held.confirmed).elapsed() >= lease {
        tracing::warn!(key = %held.key, "lease could not be renewed before it ran out; cancelling its run");
        held.lost.fire();
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;
    use crate::error::StoreError;
    use crate::idempotency::Claim;
    use std::sync::atomic::AtomicU32;

    struct Count(AtomicU32);
    #[async_trait::async_trait]
    impl Store for Count {
        async fn claim(&self, _: &Key, _: &str, _: Duration, _: u32) -> Result<Claim, StoreError> {
            unreachable!()
        }
        async fn renew(&self, _: &Key, _: Fence, _: Duration) -> Result<bool, StoreError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }
        async fn complete(&self, _: &Key, _: Fence) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn mark_dead_lettered(&self, _: &Key, _: Fence) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn release(&self, _: &Key, _: Fence, _: Option<u32>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn lease() -> Arc<Lease> {
        Arc::new(Lease {
            key: Key::new("k"),
            fence: Fence(1),
            token: None,
            lost: Tripwire::within(None),
            confirmed: Mutex::new(Instant::now()),
            settling: AtomicBool::new(false),
        })
    }

    #[test]
    fn the_task_restarts_on_a_new_runtime_and_only_once() {
        let count = Arc::new(Count(AtomicU32::new(0)));
        let store: Arc<dyn Store> = count.clone();
        let renewer = Renewer::new();
        let d = Duration::from_millis(30);
        for _ in 0..3 {
            // Paused time: the interval's ticks come exactly on time.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let before = count.0.load(Ordering::SeqCst);
            let id = rt.block_on(async {
                let id = renewer.register(&store, d, lease());
                let two = renewer.register(&store, d, lease()); // second: no 2nd task
                renewer.unregister(two);
                let three = renewer.register(&store, d, lease()); // (same count of leases)
                assert_eq!(three, two, "a freed slot is taken again");
                renewer.unregister(three);
                renewer.unregister(three); // twice: nothing more
                tokio::time::sleep(Duration::from_millis(105)).await;
                id
            });
            let renewed = count.0.load(Ordering::SeqCst) - before;
            // One lease held, a 10 ms period, 105 ms: one task renews it 10
            // times (two tasks would renew it 20 times).
            assert!(
                (9..=11).contains(&renewed),
                "renewed {renewed}: one lease, one task"
            );
            renewer.unregister(id);
            drop(rt);
            assert!(
                !renewer.running.load(Ordering::SeqCst),
                "flag cleared by the drop"
            );
        }
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    fn lease(fence: u64) -> Arc<Lease> {
        Arc::new(Lease {
            key: Key::new("k"),
            fence: Fence(fence),
            token: None,
            lost: Tripwire::within(None),
            confirmed: Mutex::new(Instant::now()),
            settling: AtomicBool::new(false),
        })
    }

    fn fences(leases: &Leases) -> Vec<u64> {
        let mut fences: Vec<u64> = leases.held().iter().map(|l| l.fence.0).collect();
        fences.sort_unstable();
        fences
    }

    #[test]
    fn a_lease_is_held_until_removed_and_its_slot_is_reused() {
        let mut leases = Leases::default();
        let a = leases.insert(lease(1));
        let b = leases.insert(lease(2));
        let c = leases.insert(lease(3));
        assert_eq!(fences(&leases), [1, 2, 3]);
        leases.remove(b);
        leases.remove(b);
        assert_eq!(fences(&leases), [1, 3], "removed once, the others held");
        assert_eq!(leases.insert(lease(4)), b, "the free slot is taken");
        assert_eq!(fences(&leases), [1, 3, 4]);
        leases.remove(a);
        leases.remove(c);
        leases.remove(b);
        leases.remove(99);
        assert!(leases.held().is_empty());
        assert_eq!(leases.slots.len(), 3, "no more slots than held at once");
    }
}
