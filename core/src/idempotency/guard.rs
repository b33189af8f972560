use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::renew::{Lease, Renewer};
use super::{Fence, Key, LeaseToken, Store};
use crate::cancellation::{Tripwire, Wired};
use crate::context::Holds;

/// A lease this worker holds while the inner stack runs: the renewer renews
/// it until the guard finishes or drops, and a guard dropped unfinished (a
/// shutdown, an aborted task) releases the key without counting an attempt.
pub(crate) struct LeaseGuard {
    store: Arc<dyn Store>,
    renewer: Arc<Renewer>,
    lease: Arc<Lease>,
    duration: std::time::Duration,
    id: usize,
    armed: bool,
}

impl LeaseGuard {
    /// Holds the fresh lease `fence` on `key` (claimed at `claimed`),
    /// renewed every `duration / 3`; its tripwire (nested in `outer`)
    /// fires if it is lost. It holds `token` for its request ([`holder`](Self::holder)).
    #[allow(clippy::too_many_arguments)] // one call site, each argument its own
    pub(crate) fn hold(
        store: Arc<dyn Store>,
        renewer: Arc<Renewer>,
        duration: std::time::Duration,
        key: Key,
        fence: Fence,
        token: Option<LeaseToken>,
        claimed: Instant,
        outer: Option<Arc<dyn Wired>>,
    ) -> Self {
        let lease = Arc::new(Lease {
            key,
            fence,
            token,
            lost: Tripwire::within(outer),
            confirmed: Mutex::new(claimed),
            settling: std::sync::atomic::AtomicBool::new(false),
        });
        let id = renewer.register(&store, duration, Arc::clone(&lease));
        LeaseGuard {
            store,
            renewer,
            lease,
            duration,
            id,
            armed: true,
        }
    }

    pub(crate) fn key(&self) -> &Key {
        &self.lease.key
    }

    pub(crate) fn fence(&self) -> Fence {
        self.lease.fence
    }

    /// The lease, as what holds its request's [`LeaseToken`].
    pub(crate) fn holder(&self) -> Arc<dyn Holds> {
        Arc::clone(&self.lease) as Arc<dyn Holds>
    }

    /// The lease's tripwire: fires if the lease is lost.
    pub(crate) fn tripwire(&self) -> Arc<dyn Wired> {
        Arc::clone(&self.lease) as Arc<dyn Wired>
    }

    /// The run is over and its result is about to be written: from now on
    /// a renewal the store refuses is that write's doing, not a takeover
    /// (the renewer neither warns nor cancels).
    pub(crate) fn settling(&self) {
        self.lease
            .settling
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The lease was settled in the store; nothing to release on drop.
    pub(crate) fn finish(mut self) {
        self.armed = false;
    }

    /// The run succeeded but its completion could not be written (the
    /// store is unreachable; the message is not acked): the completion is
    /// retried in the background, backing off from 50 ms to 1 s, until the
    /// store answers or the lease has run out (then the key is taken over
    /// as after a crash). A redelivery meanwhile finds the key busy, and
    /// once the completion is written, a duplicate: the handler does not
    /// run again. The task ends by itself, within one lease.
    pub(crate) fn complete_later(mut self) {
        self.armed = false;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires by itself
        };
        let store = Arc::clone(&self.store);
        let lease = Arc::clone(&self.lease);
        let until = *lease.confirmed.lock().unwrap_or_else(|e| e.into_inner()) + self.duration;
        handle.spawn(async move {
            let mut wait = std::time::Duration::from_millis(50);
            while Instant::now() + wait < until {
                tokio::time::sleep(wait).await;
                match store.complete(&lease.key, lease.fence).await {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::debug!(%error, key = %lease.key, "completion still not written; retrying");
                    }
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(1));
            }
        });
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.unregister(self.id);
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires by itself
        };
        let store = Arc::clone(&self.store);
        let lease = Arc::clone(&self.lease);
        handle.spawn(async move {
            if let Err(error) = store.release(&lease.key, lease.fence, None).await {
                tracing::debug!(%error, key = %lease.key, "release of a dropped lease failed; it expires by itself");
            }
        });
    }
}
