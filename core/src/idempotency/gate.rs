//! [`Gate`]: lets a suspect run alone. Every run holds a shared pass; a
//! suspect (a message whose previous run ended without a result) takes the
//! gate alone: it waits until no shared pass is out, and no new one is
//! given until it ends.
//!
//! One atomic word: the count of shared passes, and a bit for the run
//! alone. A shared pass is one compare-and-swap to take and one subtraction
//! to give back (no lock); waits go through a [`Notify`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Set while a run holds (or waits to hold) the gate alone.
const ALONE: usize = 1 << (usize::BITS - 1);

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: AtomicUsize,
    /// Woken when the last shared pass is given back while a run waits to
    /// be alone, and when a run alone ends.
    changed: Notify,
}

/// A shared pass; given back on drop.
#[derive(Debug)]
pub(crate) struct Shared(Arc<Gate>);

/// The gate alone; given back on drop.
#[derive(Debug)]
pub(crate) struct Alone(Arc<Gate>);

impl Gate {
    /// A shared pass at once, unless a run is (or waits to be) alone.
    pub(crate) fn try_shared(self: &Arc<Self>) -> Option<Shared> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & ALONE != 0 {
                return None;
            }
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Shared(Arc::clone(self))),
                Err(now) => state = now,
            }
        }
    }

    /// A shared pass, once no run is (or waits to be) alone.
    pub(crate) async fn shared(self: &Arc<Self>) -> Shared {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change after it wakes this wait.
            changed.as_mut().enable();
            if let Some(pass) = self.try_shared() {
                return pass;
            }
            changed.await;
        }
    }

    /// The gate alone: waits for any other run alone to end, then (new
    /// shared passes refused from then on) for every shared pass to be
    /// given back.
    pub(crate) async fn alone(self: &Arc<Self>) -> Alone {
        // First the bit (one run alone at a time)…
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let state = self.state.fetch_or(ALONE, Ordering::AcqRel);
            if state & ALONE == 0 {
                break;
            }
            changed.await;
        }
        // …then no shared pass out. (Dropped before this point, the bit is
        // cleared by the guard.)
        let alone = Alone(Arc::clone(self));
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.load(Ordering::Acquire) == ALONE {
                return alone;
            }
            changed.await;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let before = self.0.state.fetch_sub(1, Ordering::AcqRel);
        // The last shared pass while a run waits to be alone.
        if before == ALONE | 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        self.0.state.fetch_and(!ALONE, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    #[tokio::test]
    async fn shared_passes_go_together_and_one_alone_waits_for_them() {
        let gate = gate();
        let a = gate.try_shared().expect("free");
        let b = gate.shared().await;
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.alone().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "two shared passes are out");
        assert!(
            gate.try_shared().is_none(),
            "no new pass while a run waits to be alone"
        );
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one shared pass is still out");
        drop(b);
        let alone = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("alone once the passes are back")
            .expect("joined");
        assert!(gate.try_shared().is_none());
        drop(alone);
        assert!(
            gate.try_shared().is_some(),
            "passes again after the run alone"
        );
    }

    #[tokio::test]
    async fn a_wait_for_a_pass_ends_when_the_run_alone_does() {
        let gate = gate();
        let alone = gate.alone().await;
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.shared().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(alone);
        let pass = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a pass once the run alone ended")
            .expect("joined");
        drop(pass);
        assert_eq!(gate.state.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn runs_alone_take_turns() {
        let gate = gate();
        let first = gate.alone().await;
        let second = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.alone().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "one run alone at a time");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second in turn")
            .expect("joined");
        drop(second);
        assert_eq!(gate.state.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_wait_to_be_alone_dropped_midway_lets_passes_through_again() {
        let gate = gate();
        let pass = gate.try_shared().expect("free");
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.alone().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        assert!(waiting.await.is_err(), "aborted");
        drop(pass);
        assert!(
            gate.try_shared().is_some(),
            "the aborted wait gave the bit back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_pass_is_out_while_a_run_is_alone() {
        let gate = gate();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..200 {
            let gate = Arc::clone(&gate);
            let inside = Arc::clone(&inside);
            tasks.push(tokio::spawn(async move {
                if n % 20 == 0 {
                    let _alone = gate.alone().await;
                    assert_eq!(inside.fetch_add(1000, Ordering::SeqCst), 0, "alone");
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1000, Ordering::SeqCst);
                } else {
                    let _pass = gate.shared().await;
                    assert!(
                        inside.fetch_add(1, Ordering::SeqCst) < 1000,
                        "not beside a run alone"
                    );
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("no deadlock")
                .expect("no assertion failed");
        }
        assert_eq!(gate.state.load(Ordering::Acquire), 0);
    }
}
