//! The fault scenario shared by the broker suites: publish while the
//! workers of a [`Fleet`] run, SIGKILL and restart one at random points of
//! progress, restart the broker (or a node of it) once, then check the
//! ledger and the DLQ.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop::wire;
use rand::Rng;

use crate::fleet::Fleet;
use crate::ledger::Ledger;
use crate::orders::{Kind, Order};
use crate::report::Counts;

/// A dead letter as read back from a DLQ.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its message id.
    pub message_id: String,
    /// `x-backstop-error-kind`, if present.
    pub kind: Option<String>,
    /// `x-backstop-error`, if present.
    pub error: Option<String>,
    /// Its headers.
    pub headers: backstop::message::Headers,
    /// Its body length.
    pub payload_len: usize,
}

/// What the chaos phase did.
#[derive(Debug, Default)]
pub struct Chaos {
    /// Orders the broker confirmed.
    pub acknowledged: usize,
    /// Failed publishes that were retried.
    pub publish_retries: usize,
    /// SIGKILLs sent.
    pub kills: usize,
    /// Broker restarts done.
    pub broker_restarts: usize,
    /// Worker exits nobody asked for (each was restarted).
    pub unexpected_exits: Vec<String>,
}

/// One event of the chaos schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Kill,
    RestartBroker,
}

/// Publishes `orders` to `destination` with 8 concurrent publishers, staying
/// at most `window` orders ahead of `progress` (so publishing spans the
/// whole run and the faults hit it too); a failed publish is retried every
/// 200 ms for up to 3 minutes. Returns (confirmed, retries).
async fn publish_all(
    publisher: Arc<dyn Publisher>,
    destination: String,
    orders: Arc<Vec<Order>>,
    progress: Arc<AtomicUsize>,
    window: usize,
) -> (usize, usize) {
    const LANES: usize = 8;
    let acked = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (publisher, destination, orders) =
            (publisher.clone(), destination.clone(), orders.clone());
        let (acked, retries, progress) = (acked.clone(), retries.clone(), progress.clone());
        lanes.spawn(async move {
            for order in orders.iter().skip(lane).step_by(LANES) {
                // Wait for the consumer to catch up, but not while it is
                // stalled (a kill, the broker restart): keep publishing into
                // the faults.
                let mut seen = progress.load(Ordering::Relaxed);
                let mut moved = Instant::now();
                while acked.load(Ordering::Relaxed) > seen + window
                    && moved.elapsed() < Duration::from_millis(500)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let now = progress.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, moved) = (now, Instant::now());
                    }
                }
                let started = Instant::now();
                loop {
                    match publisher.publish(&destination, &order.message).await {
                        Ok(()) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(error) if started.elapsed() < Duration::from_secs(180) => {
                            if retries.fetch_add(1, Ordering::Relaxed) % 50 == 0 {
                                eprintln!("publish failed (retrying): {error}");
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(error) => {
                            eprintln!("publish of {} gave up: {error}", order.message_id);
                            break;
                        }
                    }
                }
            }
        });
    }
    while lanes.join_next().await.is_some() {}
    (
        acked.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
    )
}

/// Runs the chaos phase: publishes `orders` while the `fleet` runs, kills a
/// random worker `kills` times at random points of progress (ledger rows)
/// and restarts it, and calls `restart_broker` once in between. Returns when
/// publishing and every event are done, with every worker running.
#[allow(clippy::too_many_arguments)] // the workers, what to publish, and what to inject
pub async fn chaos<R, Fut>(
    fleet: &mut Fleet,
    ledger: &Ledger,
    publisher: Arc<dyn Publisher>,
    destination: &str,
    orders: Arc<Vec<Order>>,
    kills: usize,
    restart_broker: R,
) -> Chaos
where
    R: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let valid = orders.iter().filter(|o| o.kind == Kind::Valid).count() as f64;
    let window = (orders.len() / 8).max(100);
    let progress = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(publish_all(
        publisher,
        destination.to_owned(),
        orders,
        progress.clone(),
        window,
    ));
    // kills + 1 events, one in each equal slice of 5..85 % progress; the
    // broker restart takes a random slice.
    let events = kills + 1;
    let (schedule, restart_at) = {
        let mut rng = rand::rng();
        let slice = 0.80 / events as f64;
        let schedule: Vec<f64> = (0..events)
            .map(|i| 0.05 + slice * (i as f64 + rng.random_range(0.1..0.9)))
            .collect();
        (schedule, rng.random_range(0..events))
    };
    let mut out = Chaos::default();
    let mut restart_broker = Some(restart_broker);
    for (i, at) in schedule.iter().enumerate() {
        let event = if i == restart_at {
            Event::RestartBroker
        } else {
            Event::Kill
        };
        let target = (at * valid) as i64;
        let started = Instant::now();
        let mut rows = 0;
        // Wait for the progress point; a worker that dies on its own is restarted.
        while started.elapsed() < Duration::from_secs(120) {
            rows = ledger.rows().await.unwrap_or(0);
            progress.store(rows.max(0) as usize, Ordering::Relaxed);
            if rows >= target {
                break;
            }
            fleet.restart_exited(&mut out.unexpected_exits);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match event {
            Event::Kill => {
                let which = fleet.kill9_one();
                out.kills += 1;
                eprintln!(
                    "kill -9 #{} (worker {which}) at {rows} ledger rows ({:.0} % target)",
                    out.kills,
                    at * 100.0
                );
            }
            Event::RestartBroker => {
                eprintln!("broker restart at {rows} ledger rows");
                if let Some(restart) = restart_broker.take() {
                    restart().await;
                }
                out.broker_restarts += 1;
            }
        }
    }
    while !publishing.is_finished() {
        if let Ok(rows) = ledger.rows().await {
            progress.store(rows.max(0) as usize, Ordering::Relaxed);
        }
        fleet.restart_exited(&mut out.unexpected_exits);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (acked, retries) = publishing.await.expect("the publishers finish");
    out.acknowledged = acked;
    out.publish_retries = retries;
    out
}

/// How long a drain may go without a new order in the ledger before
/// [`wait_drained`] shows the workers' last lines.
const STALLED: Duration = Duration::from_secs(30);

/// Polls until the ledger holds a row for each of the `valid` orders (and
/// `more` says the rest is in place too), restarting a worker that exits on
/// its own. Returns false at the deadline.
pub async fn wait_drained<M, Fut>(
    fleet: &mut Fleet,
    ledger: &Ledger,
    valid: usize,
    deadline: Duration,
    unexpected_exits: &mut Vec<String>,
    mut more: M,
) -> bool
where
    M: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut last_report = Instant::now();
    // The workers' logs are removed when a run passes: a drain that stops
    // moving shows their last lines once, so a slow run can be read.
    let mut progress = (usize::MAX, Instant::now());
    let mut shown = false;
    while started.elapsed() < deadline {
        fleet.restart_exited(unexpected_exits);
        let distinct = ledger.executions().await.map(|e| e.len()).unwrap_or(0);
        if distinct >= valid && more().await {
            return true;
        }
        if distinct != progress.0 {
            progress = (distinct, Instant::now());
        } else if !shown && progress.1.elapsed() > STALLED {
            shown = true;
            eprintln!(
                "draining: no new order in the ledger for {STALLED:?} at {distinct}/{valid}; the workers' last lines:\n{}",
                fleet.log_tail(40)
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("draining: {distinct}/{valid} orders in the ledger");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Reads and acks deliveries from `source` until at least `expected` arrived
/// and none came for `idle`, or until `deadline`.
pub async fn read_dead_letters<S: Source>(
    source: S,
    expected: usize,
    idle: Duration,
    deadline: Duration,
) -> Vec<DeadLetter> {
    read_messages(source, expected, idle, deadline)
        .await
        .iter()
        .map(|m| DeadLetter {
            message_id: m.meta.message_id.clone(),
            kind: m.header(wire::ERROR_KIND).map(str::to_owned),
            error: m.header(wire::ERROR).map(str::to_owned),
            headers: m.headers.clone(),
            payload_len: m.payload.len(),
        })
        .collect()
}

/// Reads and acks every message from `source` until at least `expected`
/// arrived and none came for `idle`, or until `deadline`; then closes it.
pub async fn read_messages<S: Source>(
    mut source: S,
    expected: usize,
    idle: Duration,
    deadline: Duration,
) -> Vec<backstop::Message> {
    let started = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < deadline {
        let wait = if out.len() >= expected {
            idle
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, source.next()).await {
            Ok(Some(Ok(delivery))) => {
                out.push(delivery.message().clone());
                let _ = delivery.ack().await;
            }
            Ok(Some(Err(error))) if !error.is_fatal() => {}
            Ok(Some(Err(error))) => panic!("the source being read failed: {error}"),
            Ok(None) => break,
            Err(_) if out.len() >= expected => break,
            Err(_) => {}
        }
    }
    source.close().await;
    out
}

/// Checks the ledger and the dead letters against the orders; fills the
/// outcome counts and returns the problems found (empty when all is well).
pub fn verify(
    orders: &[Order],
    executions: &HashMap<String, i64>,
    dead: &[DeadLetter],
    counts: &mut Counts,
) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id: HashMap<&str, &Order> = orders.iter().map(|o| (o.message_id.as_str(), o)).collect();
    // Every DLQ record, by message id.
    let mut dlq_seen: HashMap<&str, Vec<&DeadLetter>> = HashMap::new();
    for letter in dead {
        dlq_seen
            .entry(letter.message_id.as_str())
            .or_default()
            .push(letter);
        match by_id.get(letter.message_id.as_str()) {
            Some(order) if order.kind != Kind::Valid => {
                if letter.kind.as_deref() != order.kind.error_kind() {
                    problems.push(format!(
                        "{} dead-lettered as {:?}, expected {:?} ({:?})",
                        order.message_id,
                        letter.kind,
                        order.kind.error_kind(),
                        letter.error
                    ));
                }
                if letter.error.as_deref().is_none_or(str::is_empty) {
                    problems.push(format!("{} has no x-backstop-error", order.message_id));
                }
            }
            Some(order) => problems.push(format!(
                "valid order {} dead-lettered: {:?} {:?}",
                order.message_id, letter.kind, letter.error
            )),
            None => counts.dlq_unexpected += 1,
        }
    }
    counts.sent = orders.len();
    counts.ledger_rows = executions.values().sum();
    let mut expected_rows = HashSet::new();
    for order in orders {
        match order.kind {
            Kind::Valid => {
                counts.valid += 1;
                expected_rows.insert(order.order_id.as_str());
                match executions.get(&order.order_id).copied().unwrap_or(0) {
                    0 => {
                        counts.lost += 1;
                        if counts.lost <= 10 {
                            problems.push(format!("valid order {} never executed", order.order_id));
                        }
                    }
                    1 => counts.executed_once += 1,
                    n => {
                        counts.duplicated += 1;
                        problems.push(format!("order {} executed {n} times", order.order_id));
                    }
                }
            }
            Kind::Invalid | Kind::Poison => {
                counts.expected_dead += 1;
                match dlq_seen
                    .get(order.message_id.as_str())
                    .map_or(&[][..], Vec::as_slice)
                {
                    [] => {
                        counts.lost += 1;
                        problems.push(format!(
                            "{:?} {} not in the DLQ",
                            order.kind, order.message_id
                        ));
                    }
                    [_] => counts.dead_lettered += 1,
                    copies => {
                        counts.dead_lettered += 1;
                        counts.dlq_duplicates += copies.len() - 1;
                        let last_failures = copies
                            .iter()
                            .map(|l| l.headers.get(wire::LAST_FAILURE).unwrap_or("?").to_owned())
                            .collect();
                        counts
                            .dlq_duplicate_ids
                            .push((order.message_id.clone(), last_failures));
                    }
                }
            }
        }
    }
    let strangers = executions
        .keys()
        .filter(|k| !expected_rows.contains(k.as_str()))
        .count();
    if strangers > 0 {
        problems.push(format!(
            "{strangers} ledger order ids that are not valid orders"
        ));
    }
    if counts.dlq_unexpected > 0 {
        problems.push(format!(
            "{} DLQ records of unknown message ids",
            counts.dlq_unexpected
        ));
    }
    problems
}
