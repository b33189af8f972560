//! The relay's loop: a [`RelayLoop`] goes round after round over its log;
//! see the [relay's module docs](super) for what a round does.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use backstop::CancellationToken;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::deliver::{UnitResult, deliver, group_by_unit};
use super::pass::{Bound, Pass, PassEnd};
use super::{RecordLog, Target};
use crate::RelayConfig;
use crate::metrics;
use crate::outlet::{Class, Failure, Outlet};
use crate::record::{SpooledRecord, Unit};

/// Runs the relay loop over `log` until `stop` is cancelled, the log
/// reports itself closed, or the relay no longer owns it.
pub(super) async fn run<T: Target, L: RecordLog>(
    log: Arc<L>,
    target: Arc<T>,
    config: RelayConfig,
    stop: CancellationToken,
) {
    RelayLoop::new(log, target, config, stop).run().await;
}

/// Whether the loop goes on after a step.
type Step = ControlFlow<()>;

/// The relay loop's state: what one round hands to the next.
struct RelayLoop<T, L> {
    log: Arc<L>,
    target: Arc<T>,
    config: RelayConfig,
    stop: CancellationToken,
    /// The log's name, for logs and metrics.
    name: String,
    /// Where the relay is in its pass over the log.
    pass: Pass,
    /// The units that wait (a record of theirs failed) until the pass ends.
    blocked: HashSet<Unit>,
    /// Rounds in a row that failed as a whole (the backoff's exponent).
    failed_rounds: u32,
    /// Reading one record at a time until the broker confirms one: at the
    /// start, and after the broker was found unreachable.
    probing: bool,
}

/// What the read of a round found.
enum Batch {
    /// Records after the cursor.
    Records(Vec<SpooledRecord>),
    /// Nothing after the cursor.
    Empty,
    /// The read failed (logged); the round backs off.
    Failed,
    /// The log is closed: the relay stops.
    Closed,
}

/// What became of the records a round sent, once logged and counted.
struct Outcome {
    /// The `seq`s the broker confirmed.
    confirmed: Vec<u64>,
    /// How many units failed (and now wait).
    failures: usize,
    /// The first failure that found the broker unreachable.
    unreachable: Option<String>,
}

impl<T: Target, L: RecordLog> RelayLoop<T, L> {
    fn new(log: Arc<L>, target: Arc<T>, config: RelayConfig, stop: CancellationToken) -> Self {
        RelayLoop {
            name: log.name().to_owned(),
            log,
            target,
            config,
            stop,
            pass: Pass::default(),
            blocked: HashSet::new(),
            failed_rounds: 0,
            // Start carefully: one record first, whole batches once the broker confirmed.
            probing: true,
        }
    }

    /// Goes round until stopped; see the [module docs](self).
    async fn run(mut self) {
        while !self.stop.is_cancelled() {
            if self.round().await.is_break() {
                break;
            }
        }
        tracing::debug!(spool = %self.name, "relay stopped");
    }

    /// One round: read a batch after the cursor, send it, settle what came back.
    async fn round(&mut self) -> Step {
        let log = Arc::clone(&self.log);
        let arrived = log.arrived().notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let limit = if self.probing {
            1
        } else {
            self.config.batch.max(1)
        };
        let records = match self.next_batch(limit).await {
            Batch::Records(records) => records,
            Batch::Empty => return self.wait_for_records(arrived).await,
            Batch::Failed => return self.back_off().await,
            Batch::Closed => return ControlFlow::Break(()),
        };
        let short = records.len() < limit;
        self.pass.full = !short;
        self.pass.cursor = records.last().map_or(self.pass.cursor, |r| r.seq);
        let results = self.send_units(records).await;
        if !self.log.still_owned().await {
            tracing::info!(spool = %self.name, "the relay no longer owns its log; it stops");
            return ControlFlow::Break(());
        }
        let outcome = self.record_results(results);
        if let Some(ended) = self.settle(outcome).await {
            // The round ended in a backoff: a new pass, from the oldest record.
            return ended;
        }
        // The end of the log as it was (a short read), or everything that
        // was in it when the pass began: the pass ends (under load too),
        // so waiting units are retried when due and, on a log that commits
        // out of order, a record that became visible behind the cursor is
        // read.
        if short || matches!(self.pass.high, Bound::Known(high) if self.pass.cursor >= high) {
            let _ = self.pass.end(&mut self.blocked, &self.config.backoff);
        }
        ControlFlow::Continue(())
    }

    /// Reads up to `limit` records after the cursor, asking the pass's
    /// bound first when it needs one.
    async fn next_batch(&mut self, limit: usize) -> Batch {
        let pass = &mut self.pass;
        if pass.cursor == 0 && pass.high == Bound::NotAsked
            || pass.full && pass.high == Bound::Unknown
        {
            // The bound of this pass: asked when it starts, and again while
            // the log could not tell and the reads come back full.
            pass.high = Bound::from(self.log.high_water().await);
        }
        match self.log.read_after(self.pass.cursor, limit).await {
            Ok(records) if records.is_empty() => Batch::Empty,
            Ok(records) => Batch::Records(records),
            Err(error) if L::is_closed(&error) => {
                tracing::debug!(spool = %self.name, %error, "the relay's log is closed");
                Batch::Closed
            }
            Err(error) => {
                tracing::error!(spool = %self.name, %error, "the relay cannot read the spool");
                Batch::Failed
            }
        }
    }

    /// Nothing after the cursor: ends the pass, then waits for new
    /// records, the waiting units' backoff or the idle poll.
    async fn wait_for_records(&mut self, arrived: Pin<&mut Notified<'_>>) -> Step {
        self.pass.full = false;
        let wake = match self.pass.end(&mut self.blocked, &self.config.backoff) {
            // Waiting units are due: retry them from the oldest record now.
            PassEnd::Retry => return ControlFlow::Continue(()),
            // Every unit through: look again after the idle poll (the
            // log was empty: the next pass asks its bound only if its
            // reads come back full).
            PassEnd::Idle => {
                self.pass.high = Bound::Unknown;
                Instant::now() + self.config.idle_poll
            }
            // Units wait for their backoff; new records go on meanwhile.
            PassEnd::Waiting(due) => due,
        };
        tokio::select! {
            () = arrived => ControlFlow::Continue(()),
            () = tokio::time::sleep_until(wake) => ControlFlow::Continue(()),
            () = self.stop.cancelled() => ControlFlow::Break(()),
        }
    }

    /// Sends each unit's records one after the other, the units
    /// concurrently, leaving out units that wait.
    async fn send_units(
        &self,
        records: Vec<SpooledRecord>,
    ) -> Vec<UnitResult<<T::Outlet as Outlet>::Error>> {
        let units = group_by_unit(records, &self.blocked);
        futures::future::join_all(
            units
                .into_iter()
                .map(|(unit, records)| deliver(&*self.log, &*self.target, unit, records)),
        )
        .await
    }

    /// Logs and counts the failures of a round; their units wait.
    fn record_results(
        &mut self,
        results: Vec<UnitResult<<T::Outlet as Outlet>::Error>>,
    ) -> Outcome {
        let mut outcome = Outcome {
            confirmed: Vec::new(),
            failures: 0,
            unreachable: None,
        };
        for result in results {
            outcome.confirmed.extend(result.confirmed);
            let Some((record, failure)) = result.failed else {
                continue;
            };
            outcome.failures += 1;
            self.log_failure(&record, &failure);
            if failure.class::<T::Outlet>() == Class::Unreachable {
                outcome
                    .unreachable
                    .get_or_insert_with(|| failure.to_string());
            }
            self.blocked.insert(result.unit);
        }
        outcome
    }

    /// Counts a record's failure and logs it by its class.
    fn log_failure(&self, record: &SpooledRecord, failure: &Failure<<T::Outlet as Outlet>::Error>) {
        let name = &self.name;
        let reason = failure.reason::<T::Outlet>();
        metrics::relay_failure(name, reason);
        let destination = record.destination.as_deref().unwrap_or("<default>");
        if failure.for_good::<T::Outlet>() {
            // Could not be set aside; logged there.
        } else if failure.class::<T::Outlet>() == Class::Permanent {
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
    }

    /// Removes the confirmed records and tells the target what the round
    /// found about the broker; backs off when the round failed as a whole.
    /// `Some` when the round ended there (after its backoff; the caller
    /// returns it at once, so the pass is not also ended as idle), `None`
    /// when the round goes on.
    async fn settle(&mut self, outcome: Outcome) -> Option<Step> {
        if !outcome.confirmed.is_empty() {
            if !self.remove(&outcome.confirmed).await {
                // Start over from the oldest record after a pause.
                self.start_over();
                return Some(self.back_off().await);
            }
            self.target.broker_back();
            self.failed_rounds = 0;
            self.probing = false;
        }
        if outcome.failures > 0 {
            match outcome.unreachable {
                Some(reason) if outcome.confirmed.is_empty() => {
                    // The broker is down: back off, then probe from the oldest record.
                    self.target.broker_down(&reason);
                    self.probing = true;
                    self.start_over();
                    return Some(self.back_off().await);
                }
                // The broker answered: go on with the other units.
                _ => self.probing = false,
            }
        }
        None
    }

    /// Removes the confirmed records; false if the log could not.
    async fn remove(&self, confirmed: &[u64]) -> bool {
        match self.log.remove(confirmed).await {
            Ok(n) => {
                metrics::relayed(&self.name, n);
                true
            }
            // Confirmed but still in the file: they will be sent again (duplicates, not losses).
            Err(error) => {
                tracing::error!(spool = %self.name, %error, records = confirmed.len(),
                    "confirmed records could not be removed from the spool; they will be sent again");
                false
            }
        }
    }

    /// Forgets the waiting units and starts a new pass from the oldest record.
    fn start_over(&mut self) {
        self.blocked.clear();
        self.pass.restart();
    }

    /// Counts a failed round and sleeps its backoff; breaks when stopped first.
    async fn back_off(&mut self) -> Step {
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        let delay = self.config.backoff.delay(self.failed_rounds);
        tokio::select! {
            () = tokio::time::sleep(delay) => ControlFlow::Continue(()),
            () = self.stop.cancelled() => ControlFlow::Break(()),
        }
    }
}
