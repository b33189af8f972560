use std::sync::Arc;

use super::{Key, Store};

/// Releases a held lease if the future holding it is dropped (shutdown, an
/// aborted task) without counting an attempt.
pub(crate) struct LeaseGuard {
    store: Arc<dyn Store>,
    key: Key,
    owner: String,
    armed: bool,
}

impl LeaseGuard {
    pub(crate) fn new(store: Arc<dyn Store>, key: Key, owner: String) -> Self {
        LeaseGuard {
            store,
            key,
            owner,
            armed: true,
        }
    }

    /// The lease was settled; nothing to release on drop.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires by itself
        };
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let owner = std::mem::take(&mut self.owner);
        handle.spawn(async move {
            if let Err(error) = store.release(&key, &owner, None).await {
                tracing::debug!(%error, %key, "release of a dropped lease failed; it expires by itself");
            }
        });
    }
}
