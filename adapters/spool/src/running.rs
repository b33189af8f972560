//! [`Running`]: a [`SendPath`] with its relay running, the part
//! [`ReliablePublisher`](crate::ReliablePublisher) and
//! [`SpoolingDeadLetterSink`](crate::SpoolingDeadLetterSink) share; and
//! [`Settings`], what both of their builders collect.

use std::sync::Arc;
use std::time::Duration;

use crate::outlet::Outlet;
use crate::relay::Relay;
use crate::send::SendPath;
use crate::{Budget, OpenError, RelayConfig, Spool, SpoolConfig, SpoolError};

/// What a builder collects before it opens the spool.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) spool: SpoolConfig,
    pub(crate) budget: Budget,
    pub(crate) relay: RelayConfig,
    /// The broker client's own delivery timeout, checked against the budget.
    pub(crate) client_timeout: Option<Duration>,
}

impl Settings {
    /// The defaults for a spool at `spool`.
    pub(crate) fn new(spool: SpoolConfig) -> Self {
        Settings {
            spool,
            budget: Budget::default(),
            relay: RelayConfig::default(),
            client_timeout: None,
        }
    }
}

/// A send path and the relay that drains its spool; cheap to clone.
pub(crate) struct Running<O> {
    pub(crate) path: Arc<SendPath<O>>,
    relay: Arc<Relay>,
}

impl<O> Clone for Running<O> {
    fn clone(&self) -> Self {
        Running {
            path: Arc::clone(&self.path),
            relay: Arc::clone(&self.relay),
        }
    }
}

impl<O: Outlet> Running<O> {
    /// Opens the spool, then starts the relay (which first delivers
    /// whatever the spool holds).
    pub(crate) async fn open(outlet: O, settings: Settings) -> Result<Self, OpenError> {
        if let Some(client) = settings.client_timeout {
            settings.budget.check_client_timeout(client)?;
        }
        let spool = Spool::open(settings.spool).await?;
        let path = Arc::new(SendPath::new(outlet, spool, settings.budget));
        let relay = Relay::spawn(
            Arc::new(path.spool.clone()),
            Arc::clone(&path),
            settings.relay,
        );
        Ok(Running {
            path,
            relay: Arc::new(relay),
        })
    }
}

impl<O> Running<O> {
    /// Waits until the relay has delivered everything in the spool, at most `timeout`.
    pub(crate) async fn flush(&self, timeout: Duration) -> Result<(), SpoolError> {
        self.path.spool.drained(timeout).await
    }

    /// Stops the relay after its current round and closes the spool.
    pub(crate) async fn close(self) -> Result<(), SpoolError> {
        self.relay.stop().await;
        self.path.spool.clone().close().await
    }

    /// Formats the owner `name`: its spool and budget.
    pub(crate) fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("spool", &self.path.spool)
            .field("budget", &self.path.budget)
            .finish_non_exhaustive()
    }
}
