//! The relay: a task that drains the spool to the broker, in order, and
//! removes a record only after the broker confirmed it.
//!
//! It reads the spool in `seq` order, a batch at a time, and sends each
//! ordering unit's records (destination + key) one after the other, the
//! units of a batch concurrently. A record the broker refuses for good (too
//! large, invalid, not authorised), and a row that cannot be read back, is
//! moved to the spool's refused records
//! ([`Spool::refused`](crate::Spool::refused), `backstop spool refused`,
//! metric `backstop_spool_refused_total`) and its unit goes on. Any other
//! failure makes the unit wait: its later
//! records are skipped for the rest of the pass, so they never overtake it,
//! while other units go on (new records too). After a backoff
//! ([`RelayConfig::backoff`](crate::RelayConfig::backoff), growing while the same pass keeps ending with
//! waiting units) the relay starts again from the oldest record.
//!
//! When nothing in a batch was confirmed and the broker was unreachable,
//! the relay marks the broker down (publishes go straight to the spool),
//! backs off, and then probes with the single oldest record before sending
//! whole batches again. A confirm marks the broker up.
//!
//! A record is removed in the transaction after its confirm; a crash
//! between the two sends it again after the restart (at-least-once; the
//! message id lets consumers deduplicate).
//!
//! The loop drains any [`RecordLog`]: the local [`Spool`](crate::Spool),
//! or another durable log such as a PostgreSQL outbox table
//! ([`Relay::start`]). A pass ends at the end of the log (a short or empty
//! read) or, for a log that tells its highest `seq`
//! ([`RecordLog::high_water`]), once it has read everything that was there
//! when it began, so passes end under steady load and behind a backlog
//! too. A pass that ends with no key waiting starts the next from the
//! oldest record (sent records are gone, so that costs little), which
//! finds a record that became visible behind the cursor (a transaction
//! that committed late); waiting keys are retried from the oldest record
//! at the end of the first pass after their backoff is due.

mod deliver;
mod log;
mod pass;
mod run;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::CancellationToken;
use backstop::publish::Publisher;
use tokio::task::JoinHandle;

use crate::RelayConfig;
use crate::outlet::{Outlet, PublisherOutlet};

pub use self::log::RecordLog;

/// Where the relay sends, and who hears that the broker is up or down.
pub(crate) trait Target: Send + Sync + 'static {
    /// The sender's type.
    type Outlet: Outlet;
    /// The sender.
    fn outlet(&self) -> &Self::Outlet;
    /// The bound on one send.
    fn attempt_timeout(&self) -> Duration;
    /// A confirm arrived.
    fn broker_back(&self);
    /// A round found the broker unreachable.
    fn broker_down(&self, reason: &dyn std::fmt::Display);
}

/// A relay's publisher: a confirmed [`Publisher`] with a bound on each send.
struct Direct<P> {
    outlet: PublisherOutlet<P>,
    attempt_timeout: Duration,
    name: String,
    down: std::sync::atomic::AtomicBool,
}

impl<P: Publisher> Target for Direct<P> {
    type Outlet = PublisherOutlet<P>;

    fn outlet(&self) -> &PublisherOutlet<P> {
        &self.outlet
    }

    fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    fn broker_back(&self) {
        if self.down.swap(false, std::sync::atomic::Ordering::AcqRel) {
            tracing::info!(log = %self.name, "broker confirms again: the relay drains its log");
        }
    }

    fn broker_down(&self, reason: &dyn std::fmt::Display) {
        if !self.down.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tracing::warn!(log = %self.name, error = %reason,
                "broker unreachable: the relay backs off and keeps its records");
        }
    }
}

/// A running relay task; stops it when dropped.
///
/// It reads a [`RecordLog`] in `seq` order a batch at a time, sends each
/// key's records one after the other (different keys concurrently), and
/// removes a record only after the broker confirmed it. A key whose record
/// fails waits, so its later records never overtake it; a record the
/// broker refuses for good is set aside instead. A pass ends at the end of
/// the log or once it read what was there when it began; with no key
/// waiting, the next starts from the oldest record. A crash between a
/// confirm and the removal sends the record again (same message id).
#[derive(Debug)]
pub struct Relay {
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    pub(crate) fn spawn<T: Target, L: RecordLog>(
        log: Arc<L>,
        target: Arc<T>,
        config: RelayConfig,
    ) -> Relay {
        Relay::task(|stop| run::run(log, target, config, stop))
    }

    /// Runs `task` on the runtime as a relay: it gets the token that
    /// [`stop`](Self::stop) (or dropping the relay) cancels, and should end
    /// soon after. For relays built on this one (a PostgreSQL outbox's).
    pub fn task<F, Fut>(task: F) -> Relay
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(task(stop.clone()));
        Relay {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Starts a relay draining `log` to `publisher`, each send bounded by
    /// `attempt_timeout`. It runs until [`stop`](Self::stop)ped, dropped,
    /// or the log reports itself closed ([`RecordLog::is_closed`]).
    pub fn start<L: RecordLog, P: Publisher>(
        log: Arc<L>,
        publisher: P,
        config: RelayConfig,
        attempt_timeout: Duration,
    ) -> Relay {
        let target = Direct {
            outlet: PublisherOutlet(publisher),
            attempt_timeout,
            name: log.name().to_owned(),
            down: std::sync::atomic::AtomicBool::new(false),
        };
        Relay::spawn(log, Arc::new(target), config)
    }

    /// True once the relay's task has ended (stopped, or its log closed).
    pub fn is_finished(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Stops the relay after its current round and waits for it.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(%error, "a relay task panicked");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
