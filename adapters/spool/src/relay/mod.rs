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
//! ([`RelayConfig::backoff`], growing while the same pass keeps ending with
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::{CancellationToken, Publisher, RetryPolicy};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::outlet::{Class, Failure, Outlet, PublisherOutlet, attempt};
use crate::record::{SpooledRecord, Unit};
use crate::{Spool, SpoolError, metrics};

/// A durable log of messages waiting for the broker, in order: what a
/// [`Relay`] drains. Implemented by the local [`Spool`] and by other
/// stores of outgoing messages (a PostgreSQL outbox table).
///
/// Records carry increasing `seq` numbers. The relay reads them in `seq`
/// order a batch at a time, removes those the broker confirmed, and sets
/// aside those the broker refuses for good.
#[async_trait::async_trait]
pub trait RecordLog: Send + Sync + 'static {
    /// The log's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The log's name in logs and metrics (the `spool` label).
    fn name(&self) -> &str;

    /// Notified when records were added, so an idle relay looks at once.
    fn arrived(&self) -> &Notify;

    /// Up to `limit` records with `seq > after`, oldest first, leaving out
    /// those set aside.
    async fn read_after(&self, after: u64, limit: usize)
    -> Result<Vec<SpooledRecord>, Self::Error>;

    /// True when `error` means the log is closed for good (or no longer
    /// this relay's to drain): the relay stops.
    fn is_closed(error: &Self::Error) -> bool;

    /// Removes the records `seqs` (confirmed by the broker); how many were removed.
    async fn remove(&self, seqs: &[u64]) -> Result<u64, Self::Error>;

    /// Moves record `seq` out of its key's way, keeping it for an operator:
    /// the broker refuses it for good (`reason` is the failure's label).
    async fn set_aside(&self, seq: u64, reason: &str, error: &str) -> Result<(), Self::Error>;

    /// The highest `seq` in the log now, if the log can tell (default:
    /// unknown). A pass of the relay covers at least the records up to
    /// it, then ends even while new records keep coming, so waiting keys
    /// are retried and late records found in bounded time under load.
    async fn high_water(&self) -> Option<u64> {
        None
    }

    /// True while this relay may still send the log's records: checked
    /// before each send, so a relay that lost its claim on the log (a
    /// leader's lock) stops at once rather than at its next read. Default
    /// true.
    async fn still_owned(&self) -> bool {
        true
    }
}

/// The local spool as a log. One relay per spool: a [`ReliablePublisher`](crate::ReliablePublisher)
/// or [`SpoolingDeadLetterSink`](crate::SpoolingDeadLetterSink) already
/// runs one on the spool it opened; a second [`Relay::start`] on it would
/// send records twice and out of order.
#[async_trait::async_trait]
impl RecordLog for Spool {
    type Error = SpoolError;

    fn name(&self) -> &str {
        &self.config().name
    }

    fn arrived(&self) -> &Notify {
        &self.state().arrived
    }

    async fn high_water(&self) -> Option<u64> {
        Some(self.state().high.load(std::sync::atomic::Ordering::Acquire))
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        Spool::read_after(self, after, limit).await
    }

    fn is_closed(error: &SpoolError) -> bool {
        matches!(error, SpoolError::Closed { .. })
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, SpoolError> {
        Spool::remove(self, seqs).await
    }

    async fn set_aside(&self, seq: u64, reason: &str, error: &str) -> Result<(), SpoolError> {
        Spool::set_aside(self, seq, reason, error).await.map(drop)
    }
}

/// Where the relay sends, and who hears that the broker is up or down.
pub(crate) trait Target: Send + Sync + 'static {
    /// The sender.
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

/// How the relay drains the spool.
///
/// The relay is a task that reads the spool in order, a batch at a time,
/// sends each key's records one after the other (different keys
/// concurrently), and removes a record only after the broker confirmed it.
/// A key whose record fails waits, so its later records never overtake it;
/// the others go on. A record the broker refuses for good is moved to the
/// refused records ([`Spool::refused`](crate::Spool::refused)) instead, so it
/// never blocks its key. When the broker is unreachable the relay backs off and
/// then probes with the single oldest record before sending whole batches
/// again. A crash between a confirm and the record's removal sends the
/// record again after the restart (at-least-once, same message id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Records read (and at most sent concurrently) per round (default 256).
    pub batch: usize,
    /// How often an idle relay looks at the spool even without a wake-up (default 1 s).
    pub idle_poll: Duration,
    /// The backoff between failed rounds: [`RetryPolicy::delay`] of the
    /// number of failed rounds in a row (default 100 ms … 5 s; the relay never gives up).
    pub backoff: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 256,
            idle_poll: Duration::from_secs(1),
            backoff: RetryPolicy::default()
                .backoff(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

impl RelayConfig {
    /// Sets the batch size (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the backoff bounds between failed rounds.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = self.backoff.backoff(initial, max);
        self
    }

    /// Sets the idle poll interval.
    #[must_use]
    pub fn idle_poll(mut self, every: Duration) -> Self {
        self.idle_poll = every;
        self
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
        Relay::task(|stop| run(log, target, config, stop))
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

/// Sleeps `delay` unless stopped first; false when stopped.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

/// What became of one unit's records in a round.
struct UnitResult<E> {
    unit: Unit,
    confirmed: Vec<u64>,
    failed: Option<(SpooledRecord, Failure<E>)>,
}

async fn deliver<T: Target, L: RecordLog>(
    log: &L,
    target: &T,
    unit: Unit,
    records: Vec<SpooledRecord>,
) -> UnitResult<<T::Outlet as Outlet>::Error> {
    let mut confirmed = Vec::with_capacity(records.len());
    for record in records {
        if !log.still_owned().await {
            // Not ours any more: the rest stays for the log's new owner.
            break;
        }
        let failure = match attempt(
            target.outlet(),
            record.destination.as_deref(),
            &record.message,
            target.attempt_timeout(),
        )
        .await
        {
            Ok(()) => {
                confirmed.push(record.seq);
                continue;
            }
            Err(failure) => failure,
        };
        // Refused for good: out of the key's way, into the refused records.
        if failure.for_good::<T::Outlet>()
            && set_aside::<T::Outlet, L>(log, &record, &failure).await
        {
            continue;
        }
        return UnitResult {
            unit,
            confirmed,
            failed: Some((record, failure)),
        };
    }
    UnitResult {
        unit,
        confirmed,
        failed: None,
    }
}

/// Moves a record the broker refused for good to the refused records; false
/// if the spool could not (the record then waits, as any failure).
async fn set_aside<O: Outlet, L: RecordLog>(
    log: &L,
    record: &SpooledRecord,
    failure: &Failure<O::Error>,
) -> bool {
    let name = log.name();
    let reason = failure.reason::<O>();
    let destination = record.destination.as_deref().unwrap_or("<default>");
    match log
        .set_aside(record.seq, reason, &failure.to_string())
        .await
    {
        Ok(_) => {
            metrics::relay_failure(name, reason);
            metrics::refused(name, reason);
            tracing::error!(
                spool = %name, message_id = %record.message.meta.message_id, destination,
                seq = record.seq, reason, error = %failure,
                "the broker refuses a spooled message for good; it is moved to the refused \
                 records (backstop spool refused) and its key goes on"
            );
            true
        }
        Err(error) => {
            tracing::error!(
                spool = %name, message_id = %record.message.meta.message_id, destination,
                seq = record.seq, reason, %error,
                "a refused message could not be moved aside; its key waits behind it"
            );
            false
        }
    }
}

/// The relay loop; see the [module docs](self).
async fn run<T: Target, L: RecordLog>(
    spool: Arc<L>,
    core: Arc<T>,
    config: RelayConfig,
    stop: CancellationToken,
) {
    let name = spool.name().to_owned();
    let mut pass = Pass::default();
    let mut blocked: HashSet<Unit> = HashSet::new();
    let mut failed_rounds = 0u32;
    // Start carefully: one record first, whole batches once the broker confirmed.
    let mut probing = true;
    while !stop.is_cancelled() {
        let arrived = spool.arrived().notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if pass.cursor == 0 && pass.high.is_none() || pass.full && pass.high == Some(None) {
            // The bound of this pass: asked when it starts, and again while
            // the log could not tell and the reads come back full.
            pass.high = Some(spool.high_water().await);
        }
        let limit = if probing { 1 } else { config.batch.max(1) };
        let records = match spool.read_after(pass.cursor, limit).await {
            Ok(records) => records,
            Err(error) if L::is_closed(&error) => {
                tracing::debug!(spool = %name, %error, "the relay's log is closed");
                break;
            }
            Err(error) => {
                tracing::error!(spool = %name, %error, "the relay cannot read the spool");
                failed_rounds = failed_rounds.saturating_add(1);
                if !pause(&stop, config.backoff.delay(failed_rounds)).await {
                    break;
                }
                continue;
            }
        };
        if records.is_empty() {
            pass.full = false;
            let wake = match pass.end(&mut blocked, &config.backoff) {
                // Waiting units are due: retry them from the oldest record now.
                PassEnd::Retry => continue,
                // Every unit through: look again after the idle poll (the
                // log was empty: the next pass asks its bound only if its
                // reads come back full).
                PassEnd::Idle => {
                    pass.high = Some(None);
                    tokio::time::Instant::now() + config.idle_poll
                }
                // Units wait for their backoff; new records go on meanwhile.
                PassEnd::Waiting(due) => due,
            };
            tokio::select! {
                () = &mut arrived => {}
                () = tokio::time::sleep_until(wake) => {}
                () = stop.cancelled() => break,
            }
            continue;
        }
        let short = records.len() < limit;
        pass.full = !short;
        pass.cursor = records.last().map_or(pass.cursor, |r| r.seq);

        // Group by unit, in spool order, leaving out units that wait.
        let mut units: Vec<(Unit, Vec<SpooledRecord>)> = Vec::new();
        let mut index: HashMap<Unit, usize> = HashMap::new();
        for record in records {
            let unit = record.unit();
            if blocked.contains(&unit) {
                continue;
            }
            match index.get(&unit) {
                Some(&i) => units[i].1.push(record),
                None => {
                    index.insert(unit.clone(), units.len());
                    units.push((unit, vec![record]));
                }
            }
        }
        let results = futures::future::join_all(
            units
                .into_iter()
                .map(|(unit, records)| deliver(&*spool, &*core, unit, records)),
        )
        .await;
        if !spool.still_owned().await {
            tracing::info!(spool = %name, "the relay no longer owns its log; it stops");
            break;
        }

        let mut confirmed = Vec::new();
        let mut failures = 0usize;
        let mut unreachable: Option<String> = None;
        for result in results {
            confirmed.extend(result.confirmed);
            let Some((record, failure)) = result.failed else {
                continue;
            };
            failures += 1;
            let class = failure.class::<T::Outlet>();
            let reason = failure.reason::<T::Outlet>();
            metrics::relay_failure(&name, reason);
            let destination = record.destination.as_deref().unwrap_or("<default>");
            if failure.for_good::<T::Outlet>() {
                // Could not be set aside; logged there.
            } else if class == Class::Permanent {
                tracing::error!(
                    spool = %name, message_id = %record.message.meta.message_id, destination,
                    seq = record.seq, reason, error = %failure,
                    "the broker cannot take a spooled message until its destination is fixed; \
                     its key waits behind it (or remove the record with Spool::remove)"
                );
            } else {
                tracing::warn!(
                    spool = %name, message_id = %record.message.meta.message_id, destination,
                    seq = record.seq, reason, error = %failure,
                    "relaying a spooled message failed; it stays in the spool"
                );
            }
            if class == Class::Unreachable {
                unreachable.get_or_insert_with(|| failure.to_string());
            }
            blocked.insert(result.unit);
        }

        if !confirmed.is_empty() {
            match spool.remove(&confirmed).await {
                Ok(n) => metrics::relayed(&name, n),
                // Confirmed but still in the file: they will be sent again (duplicates, not losses).
                Err(error) => {
                    tracing::error!(spool = %name, %error, records = confirmed.len(),
                        "confirmed records could not be removed from the spool; they will be sent again");
                    // Start over from the oldest record after a pause.
                    failed_rounds = failed_rounds.saturating_add(1);
                    blocked.clear();
                    pass.restart();
                    if !pause(&stop, config.backoff.delay(failed_rounds)).await {
                        break;
                    }
                    continue;
                }
            }
            core.broker_back();
            failed_rounds = 0;
            probing = false;
        }
        if failures > 0 {
            match unreachable {
                Some(reason) if confirmed.is_empty() => {
                    // The broker is down: back off, then probe from the oldest record.
                    core.broker_down(&reason);
                    failed_rounds = failed_rounds.saturating_add(1);
                    probing = true;
                    blocked.clear();
                    pass.restart();
                    if !pause(&stop, config.backoff.delay(failed_rounds)).await {
                        break;
                    }
                    continue;
                }
                // The broker answered: go on with the other units.
                _ => probing = false,
            }
        }
        // The end of the log as it was (a short read), or everything that
        // was in it when the pass began: the pass ends (under load too),
        // so waiting units are retried when due and, on a log that commits
        // out of order, a record that became visible behind the cursor is
        // read.
        if short || pass.high.flatten().is_some_and(|high| pass.cursor >= high) {
            let _ = pass.end(&mut blocked, &config.backoff);
        }
    }
    tracing::debug!(spool = %name, "relay stopped");
}

/// Where the relay is in its pass over the log.
#[derive(Debug, Default)]
struct Pass {
    /// The last `seq` read in this pass (0: the pass starts at the oldest record).
    cursor: u64,
    /// The log's highest `seq` when the pass began (`Some(None)`: unknown;
    /// `None`: not asked yet).
    high: Option<Option<u64>>,
    /// Passes in a row that ended with units waiting (the backoff's exponent).
    stuck: u32,
    /// The last read came back full (`batch` records).
    full: bool,
    /// When the waiting units are retried.
    retry_at: Option<tokio::time::Instant>,
}

/// What the end of a pass leads to.
enum PassEnd {
    /// Waiting units were due: a new pass retries them from the oldest record.
    Retry,
    /// No unit waits: a new pass starts from the oldest record.
    Idle,
    /// Units wait until then; the pass goes on after the cursor meanwhile.
    Waiting(tokio::time::Instant),
}

impl Pass {
    /// Starts a new pass from the oldest record.
    fn restart(&mut self) {
        self.cursor = 0;
        self.high = None;
        self.retry_at = None;
    }

    /// Ends the pass: see [`PassEnd`].
    fn end(&mut self, blocked: &mut HashSet<Unit>, backoff: &RetryPolicy) -> PassEnd {
        if blocked.is_empty() {
            self.stuck = 0;
            self.restart();
            return PassEnd::Idle;
        }
        let now = tokio::time::Instant::now();
        let due = *self
            .retry_at
            .get_or_insert_with(|| now + backoff.delay(self.stuck.saturating_add(1)));
        if now >= due {
            self.stuck = self.stuck.saturating_add(1);
            blocked.clear();
            self.restart();
            PassEnd::Retry
        } else {
            PassEnd::Waiting(due)
        }
    }
}
