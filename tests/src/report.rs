//! Jepsen-style counts of one fault run.

use std::fmt;
use std::time::Duration;

use crate::fault::Chaos;
use crate::fleet::Fleet;
use crate::ledger::Ledger;

/// What happened to the orders of a run, in the terms of a Jepsen report.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// The broker and the scenario, e.g. `rabbitmq`.
    pub broker: String,
    /// Orders published (attempted).
    pub sent: usize,
    /// Orders the broker confirmed (publisher confirms / `acks=all`).
    pub acknowledged: usize,
    /// Publish calls that failed and were retried (during the broker restart).
    pub publish_retries: usize,
    /// Valid orders expected in the ledger.
    pub valid: usize,
    /// Valid orders executed exactly once.
    pub executed_once: usize,
    /// Valid orders executed more than once (duplicate effects).
    pub duplicated: usize,
    /// Ledger rows in all.
    pub ledger_rows: i64,
    /// Inbox rows (one per key the inbox committed), if the table was found.
    pub inbox_rows: Option<i64>,
    /// Orders expected in the DLQ (invalid + poison).
    pub expected_dead: usize,
    /// Distinct expected message ids found in the DLQ.
    pub dead_lettered: usize,
    /// DLQ records beyond one per message id.
    pub dlq_duplicates: usize,
    /// The message ids with more than one DLQ record, each with its copies'
    /// `x-backstop-last-failure` times (to line them up with the faults).
    pub dlq_duplicate_ids: Vec<(String, Vec<String>)>,
    /// Deliveries the workers acked as duplicates, read from their metrics
    /// while they ran ([`crate::scrape`]; a lower bound).
    pub duplicates_suppressed: u64,
    /// DLQ records of message ids that should not be there.
    pub dlq_unexpected: usize,
    /// Orders neither executed nor dead-lettered.
    pub lost: usize,
    /// Worker SIGKILLs.
    pub kills: usize,
    /// Broker restarts (or broker nodes killed and restarted).
    pub broker_restarts: usize,
    /// Worker processes consuming at once.
    pub workers: usize,
    /// Exits of fenced static Kafka members (restarted; see [`crate::fleet::Fleet::fenced`]).
    pub fenced: usize,
    /// Exits of workers whose transactional producer was stuck (restarted;
    /// see [`crate::fleet::Fleet::stuck`]).
    pub stuck: usize,
    /// The last worker's own summary line (killed workers print none).
    pub final_summary: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Counts {
    /// The checks every fault run ends with: `verify` found no problem,
    /// nothing was lost or executed twice, every valid order was executed
    /// once and every expected letter is in the DLQ.
    pub fn assert_contract(&self, problems: &[String], valid: usize, expected_dead: usize) {
        assert!(
            problems.is_empty(),
            "{} problems: {problems:#?}",
            problems.len()
        );
        assert_eq!(self.lost, 0);
        assert_eq!(self.duplicated, 0);
        assert_eq!(self.executed_once, valid);
        assert_eq!(self.dead_lettered, expected_dead);
    }
}

impl Counts {
    /// What every run reports about its workers: the fleet's size, fenced
    /// exits, the last summary line and the duplicates suppressed, the
    /// inbox rows, and the run's wall time.
    pub async fn of_run(
        broker: String,
        fleet: &Fleet,
        ledger: &Ledger,
        elapsed: Duration,
    ) -> Counts {
        Counts {
            broker,
            workers: fleet.len(),
            fenced: fleet.fenced,
            stuck: fleet.stuck,
            inbox_rows: ledger.inbox_rows().await,
            final_summary: fleet.log_tail(1),
            duplicates_suppressed: fleet.duplicates_suppressed(),
            elapsed,
            ..Counts::default()
        }
    }

    /// The chaos schedule's figures: confirmed and retried publishes,
    /// worker kills and broker restarts.
    #[must_use]
    pub fn with_chaos(self, chaos: &Chaos) -> Counts {
        Counts {
            acknowledged: chaos.acknowledged,
            publish_retries: chaos.publish_retries,
            kills: chaos.kills,
            broker_restarts: chaos.broker_restarts,
            ..self
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== fault run: {} ({:.1?}) ==", self.broker, self.elapsed)?;
        writeln!(f, "  sent                {:>7}", self.sent)?;
        writeln!(
            f,
            "  acknowledged        {:>7}   (publish retries {})",
            self.acknowledged, self.publish_retries
        )?;
        writeln!(
            f,
            "  executed once       {:>7} / {} valid   (ledger rows {}, inbox rows {})",
            self.executed_once,
            self.valid,
            self.ledger_rows,
            self.inbox_rows
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        )?;
        writeln!(f, "  duplicated effects  {:>7}", self.duplicated)?;
        writeln!(
            f,
            "  duplicates suppressed {:>5}   (acked without running again; read from the workers' metrics)",
            self.duplicates_suppressed
        )?;
        writeln!(
            f,
            "  dead-lettered       {:>7} / {} expected",
            self.dead_lettered, self.expected_dead
        )?;
        writeln!(f, "  DLQ duplicates      {:>7}", self.dlq_duplicates)?;
        for (id, copies) in self.dlq_duplicate_ids.iter().take(10) {
            writeln!(f, "    {id}: last failures {}", copies.join(", "))?;
        }
        writeln!(f, "  DLQ unexpected      {:>7}", self.dlq_unexpected)?;
        writeln!(f, "  lost                {:>7}", self.lost)?;
        writeln!(f, "  worker kills        {:>7}", self.kills)?;
        writeln!(f, "  broker restarts     {:>7}", self.broker_restarts)?;
        if self.workers > 1 || self.fenced > 0 {
            writeln!(f, "  workers             {:>7}", self.workers)?;
            writeln!(
                f,
                "  fenced static members {:>5}   (exited and restarted)",
                self.fenced
            )?;
        }
        if self.stuck > 0 {
            writeln!(
                f,
                "  stuck producers     {:>7}   (exited and restarted: a transactional call blocked past its timeout)",
                self.stuck
            )?;
        }
        write!(f, "  last worker         {}", self.final_summary)
    }
}
