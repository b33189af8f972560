//! [`Runner`]: drives a [`Source`] through a stack with bounded concurrency
//! and shuts down gracefully.
//!
//! # How a message is driven
//!
//! The runner's own task is the driver: one loop that waits, in one
//! `select!`, for a free slot (at most [`concurrency`](Runner::concurrency)
//! messages in flight), the service's readiness, the source's next delivery,
//! the breaker and shutdown, and polls every in-flight message future
//! meanwhile. A delivery becomes one future (`service.call`) in that set;
//! no task is spawned for it, and a panic that escapes it is caught for
//! that message alone (the delivery is redelivered, its lease released).
//! The runner never fetches more than it runs. Handlers that block or burn
//! CPU can opt into a task per message ([`Runner::task_per_message`]).
//!
//! On shutdown (a token, or SIGINT/SIGTERM): stop fetching, cancel the
//! handlers' tokens, let in-flight messages finish until the deadline, drop
//! what did not finish (each such delivery is nacked with requeue by its
//! drop), close the source and return a [`Summary`].
//!
//! The runner's [`Breaker`] (the kill switch, see [`breaker`](crate::breaker))
//! sees every settled delivery. While it is open or paused the runner
//! fetches nothing ([`Source::pause`]; deliveries the source had already
//! received are postponed without running), is not ready, and after the
//! cool-down runs one message at a time until one settles without an
//! outage. [`Runner::breaker`] is also the manual pause/resume of a running
//! runner.
//!
//! # Halting on a letter that can never be written
//!
//! When a message's dead letter can never be written as it is
//! ([`Error::is_unwritable_letter`](crate::Error::is_unwritable_letter): too
//! large for the DLQ, unroutable, a missing destination, not authorised),
//! acking it would lose it and retrying would loop forever. The runner
//! *halts*: it stops fetching, lets in-flight messages finish, closes the
//! source (the message stays on its queue or partition, unacked, for the
//! next worker), logs the error, sets the [`HALTED`] gauge to 1 and reports
//! not ready with the reason, until shutdown; [`Runner::run`] then returns
//! [`RunError::Halted`]. The worker does not exit on its own: fix the cause
//! (create or enlarge the DLQ, grant access) and restart it. Spooling such
//! letters locally instead is opt-in (`backstop-spool`'s
//! `SpoolingDeadLetterSink`), and as durable as the disk under the spool.

mod halt;
mod health;
mod in_flight;
mod liveness;
mod readiness;
mod source;
mod summary;

pub use self::halt::HALTED;
pub use self::health::Health;
pub use self::liveness::{BEAT_EVERY, Liveness};
pub use self::readiness::Readiness;
pub use self::source::{MissingDestinations, Source, SourceError};
pub use self::summary::Summary;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Service, ServiceExt};

use self::in_flight::{Done, InFlight, Kind, Slot};
use self::liveness::Pulse;
use crate::breaker::{BREAKER_STATE, Breaker, BreakerConfig, BreakerState, BreakerWatch, Signal};
use crate::metrics::{MetricLabels, READY};
use crate::{AckError, Delivery, Settled};

/// A run that could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source failed for good (in-flight work was drained first).
    #[error("source stopped the run: {source}")]
    Source {
        /// The source's error.
        #[source]
        source: SourceError,
        /// What the run did before it stopped.
        summary: Summary,
    },
    /// A message's dead letter could never be written, so the runner stopped
    /// consuming (see [halting](self#halting-on-a-letter-that-can-never-be-written));
    /// returned at shutdown.
    #[error("stopped consuming: {reason}")]
    Halted {
        /// Why: the sink's error.
        reason: String,
        /// What the run did before it halted.
        summary: Summary,
    },
}

/// Drives a source through a stack; see the [module docs](self).
#[derive(Debug)]
pub struct Runner<Src, Svc> {
    source: Src,
    service: Svc,
    concurrency: usize,
    deadline: Duration,
    shutdown: CancellationToken,
    readiness: Readiness,
    health: Health,
    labels: MetricLabels,
    breaker: Breaker,
    task_per_message: bool,
}

impl<Src, Svc> Runner<Src, Svc>
where
    Src: Source,
    Svc: Service<Delivery, Response = Settled, Error = AckError> + Send + 'static,
    Svc::Future: Send + 'static,
{
    /// A runner of `service` over `source`: concurrency 1, 30 s shutdown deadline.
    pub fn new(source: Src, service: Svc) -> Self {
        let health = Health::default();
        Runner {
            source,
            service,
            concurrency: 1,
            deadline: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            readiness: health.readiness().clone(),
            health,
            labels: MetricLabels::default(),
            breaker: Breaker::default(),
            task_per_message: false,
        }
    }

    /// Trips the kill switch by `config` (see [`breaker`](crate::breaker)).
    /// Without it the breaker never trips by itself, but
    /// [`Breaker::pause`] still works.
    #[must_use]
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Breaker::new(config);
        self
    }

    /// The runner's breaker: its state, and the manual
    /// [`pause`](Breaker::pause) / [`resume`](Breaker::resume) of a running runner.
    pub fn breaker(&self) -> Breaker {
        self.breaker.clone()
    }

    /// At most `n` messages in flight (for RabbitMQ, match the prefetch).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs each message on a tokio task of its own, for handlers that block
    /// or burn CPU between their awaits.
    ///
    /// By default the runner polls its in-flight messages itself, on its own
    /// task, from the same loop that waits for the source: no task is
    /// spawned per message, and a message's panic is caught for that
    /// message alone. That is the cheaper choice for handlers that mostly
    /// wait (on a database, a broker, an HTTP call). A handler that computes
    /// for long between awaits holds up the other messages of its runner
    /// then; with a task per message the runtime's worker threads run them
    /// side by side instead. The guarantees are the same either way.
    ///
    /// ```
    /// use backstop::memory::MemoryBroker;
    /// use backstop::{Context, HandlerError, Runner, StackBuilder, handler_fn};
    /// # use std::sync::Arc;
    ///
    /// let broker = MemoryBroker::new();
    /// let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
    ///     .build(handler_fn(|_v: serde_json::Value, _ctx: Context| async {
    ///         Ok::<_, HandlerError>(())
    ///     }));
    /// let runner = Runner::new(broker.consume("orders", 8), stack)
    ///     .concurrency(8)
    ///     .task_per_message();
    /// # drop(runner);
    /// ```
    #[must_use]
    pub fn task_per_message(mut self) -> Self {
        self.task_per_message = true;
        self
    }

    /// How long in-flight messages may finish after shutdown begins.
    #[must_use]
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Shuts down when `token` is cancelled. The runner cancels it too when
    /// it stops; handlers see it as their cancellation.
    #[must_use]
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Whether this runner is consuming (for a health endpoint); see [`Readiness`].
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// This runner's readiness and the liveness of its loops (for
    /// `/readyz` and `/healthz`); see [`Health`].
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Labels this runner's gauges (`backstop_ready`, `backstop_breaker_state`,
    /// `backstop_runner_halted`) with its consumer's `source` and `group`;
    /// see [`MetricLabels`]. Install the metrics recorder first.
    #[must_use]
    pub fn metric_labels(mut self, labels: MetricLabels) -> Self {
        self.labels = labels;
        self
    }

    /// The token that shuts this runner down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Also shuts down on SIGINT or SIGTERM.
    #[must_use]
    pub fn shutdown_on_signals(self) -> Self {
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        self
    }

    /// Runs [`Source::preflight`] until it passes: a missing destination
    /// stops the run; an unreachable broker is retried with backoff (1 s
    /// doubling to 30 s) until shutdown.
    async fn preflight(&mut self) -> Result<(), SourceError> {
        let mut delay = Duration::from_secs(1);
        loop {
            let checked = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(()),
                checked = self.source.preflight() => checked,
            };
            match checked {
                Err(error @ SourceError::Disconnected(_)) => {
                    tracing::warn!(%error, ?delay, "cannot check the source's destinations yet; retrying");
                    self.readiness.not_ready(error.to_string());
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                other => return other,
            }
        }
    }

    /// Runs until the source ends or shutdown; returns what happened.
    pub async fn run(mut self) -> Result<Summary, RunError> {
        crate::metrics::describe();
        self.readiness.report_to(self.labels.gauge(READY));
        // Exported from the start (at 0), so an alert sees the first halt.
        self.labels.gauge(HALTED).set(0.0);
        self.source.attach(&self.health);
        if let Err(source) = self.preflight().await {
            tracing::error!(error = %source, "the source cannot start");
            self.readiness.not_ready(format!("stopped: {source}"));
            self.shutdown.cancel();
            self.source.close().await;
            return Err(RunError::Source {
                source,
                summary: Summary::default(),
            });
        }
        self.readiness.ready();
        let breaker = self.breaker.clone();
        breaker.report_to(self.labels.gauge(BREAKER_STATE));
        // Ended when the run returns or its future is dropped (`Pulse`).
        let driver = Liveness::new(format!("the driver loop of {:?}", self.labels.source()));
        self.health.watch(driver.clone());
        let mut run = Run {
            in_flight: InFlight::new(self.task_per_message),
            summary: Summary::default(),
            breaker: breaker.clone(),
            halted: None,
            probing: false,
            pulse: Pulse::new(driver.clone()),
            tick: idle_tick(),
        };
        // One waiter on the shutdown token for the whole run, not one per wait.
        let stopping = self.shutdown.clone().cancelled_owned();
        tokio::pin!(stopping);
        let mut states = breaker.watch();
        let mut failure = None;
        let mut paused = false;
        loop {
            run.pulse.turn();
            // Everything that finished, at once: cheaper than one turn of a
            // wait's select per completion (about 800 instructions per message).
            while let Some(done) = run.in_flight.try_next() {
                run.record(done);
            }
            if run.halted.is_some() {
                break;
            }
            let state = breaker.poll_state();
            if matches!(state, BreakerState::Open | BreakerState::Paused) {
                if !paused {
                    paused = true;
                    self.readiness
                        .not_ready(format!("consumption stopped: the breaker is {state}"));
                    // In-flight work goes on while the source pauses.
                    let held = run.polling(self.source.pause()).await;
                    for held in held {
                        run.summary.received += 1;
                        let delivery = held.postponed().with_cancellation(self.shutdown.clone());
                        let ready = ServiceExt::<Delivery>::ready(&mut self.service);
                        match run.polling(ready).await {
                            Ok(_) => run
                                .in_flight
                                .push(Slot::new(self.service.call(delivery), Kind::Uncounted)),
                            Err(error) => run.record(Done::Settled {
                                result: Err(error),
                                kind: Kind::Uncounted,
                            }),
                        }
                    }
                    tracing::warn!(state = %state, "consumption stopped");
                    if run.halted.is_some() {
                        break;
                    }
                }
                let probe_at = breaker.probe_at();
                tokio::select! {
                    biased;
                    () = &mut stopping => break,
                    () = states.changed(state) => {}
                    () = sleep_until(probe_at) => {}
                    Some(done) = run.in_flight.next() => run.record(done),
                    _ = run.tick.tick() => run.pulse.beat(),
                }
                continue;
            }
            if paused {
                paused = false;
                run.polling(self.source.resume()).await;
                tracing::info!(state = %state, "consumption resumed");
            }
            if state == BreakerState::HalfOpen {
                self.readiness
                    .not_ready("consumption is probing: the breaker is half_open");
            } else if self
                .readiness
                .run_state()
                .is_err_and(|why| why.starts_with("consumption"))
            {
                self.readiness.ready();
            }
            // A free slot and a ready service, polling in-flight work meanwhile.
            let ready = ServiceExt::<Delivery>::ready(&mut self.service);
            let ready = match run
                .settling(
                    stopping.as_mut(),
                    &mut states,
                    state,
                    self.concurrency,
                    ready,
                )
                .await
            {
                Waited::Stop => break,
                Waited::Changed => continue,
                Waited::Got(ready) => ready.is_ok(),
            };
            if !ready {
                break;
            }
            // The next delivery, polling in-flight work meanwhile. The
            // source's `next` future is kept while messages settle: it is
            // dropped only when the run stops or the breaker changes, since
            // a source's `next` may not be safe to drop mid-reconnect.
            let next = self.source.next();
            let next = match run
                .settling(stopping.as_mut(), &mut states, state, usize::MAX, next)
                .await
            {
                Waited::Stop => break,
                Waited::Changed => continue,
                Waited::Got(next) => next,
            };
            match next {
                None => break,
                // The breaker moved while this delivery was being fetched
                // (a pause, or a trip recorded by another task): it is not
                // run under the old state but postponed, as the deliveries
                // a pause holds back are; the loop then acts on the new state.
                Some(Ok(delivery)) if states.moved_from(state) => {
                    run.summary.received += 1;
                    let delivery = delivery
                        .postponed()
                        .with_cancellation(self.shutdown.clone());
                    run.start(&mut self.service, delivery, Kind::Uncounted);
                }
                Some(Ok(delivery)) => {
                    if state == BreakerState::Closed && !self.readiness.is_ready() {
                        self.readiness.ready();
                        if !self.readiness.by_source() {
                            self.readiness.connected();
                        }
                    }
                    run.summary.received += 1;
                    let delivery = delivery.with_cancellation(self.shutdown.clone());
                    let kind = if state == BreakerState::HalfOpen {
                        Kind::Probe
                    } else {
                        Kind::Counted
                    };
                    if run.start(&mut self.service, delivery, kind) && kind == Kind::Probe {
                        // The probe: nothing more is fetched until it
                        // settled (other messages in flight go on).
                        run.probing = true;
                        if run.settle_probe(stopping.as_mut()).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Err(error)) if error.is_fatal() => {
                    failure = Some(error);
                    break;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "source interrupted; it reconnects");
                    if !self.readiness.by_source() {
                        self.readiness.disconnected(error.to_string());
                    }
                }
            }
        }
        if let Some(reason) = run.halted.take() {
            return Err(self.halt(reason, run).await);
        }
        self.shutdown.cancel();
        self.readiness.not_ready(match &failure {
            Some(error) => format!("stopped: {error}"),
            None => "stopped".to_owned(),
        });
        run.drain(self.deadline).await;
        self.source.close().await;
        match failure {
            Some(source) => Err(RunError::Source {
                source,
                summary: run.summary,
            }),
            None => Ok(run.summary),
        }
    }

    /// Stops consuming after a letter that can never be written: in-flight
    /// work finishes, the source closes, and the runner stays not ready
    /// until shutdown.
    async fn halt(mut self, reason: String, mut run: Run<Svc::Future>) -> RunError {
        tracing::error!(
            %reason,
            "a dead letter can never be written; this runner stopped consuming its source and stays not ready until restarted"
        );
        halt::record(&self.labels);
        self.readiness.not_ready(format!(
            "halted: a dead letter can never be written, the message stays on its source: {reason}"
        ));
        run.drain(self.deadline).await;
        self.source.close().await;
        // Halted is not stuck: the loop keeps beating until shutdown.
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                _ = run.tick.tick() => run.pulse.beat(),
            }
        }
        RunError::Halted {
            reason,
            summary: run.summary,
        }
    }
}

/// What one run holds: its in-flight messages and what they settled.
struct Run<F> {
    in_flight: InFlight<F>,
    summary: Summary,
    breaker: Breaker,
    /// Set by the first delivery whose letter can never be written.
    halted: Option<String>,
    /// True while the half-open breaker's probe is in flight.
    probing: bool,
    /// The driver loop's liveness.
    pulse: Pulse,
    /// Beats the liveness while every wait is idle.
    tick: tokio::time::Interval,
}

/// The idle loop's timer: fires every [`BEAT_EVERY`], late ticks skipped.
fn idle_tick() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(BEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// How a wait that polled in-flight work meanwhile ended.
enum Waited<T> {
    /// Shutdown, or a halt: stop fetching.
    Stop,
    /// The breaker's state changed: look at it again.
    Changed,
    /// What was waited for.
    Got(T),
}

impl<F> Run<F>
where
    F: Future<Output = Result<Settled, AckError>> + Send + 'static,
{
    /// Calls `service` for `delivery` and puts its future in flight. A
    /// `call` that panics (a service composed by hand whose layer works in
    /// `call`, as the tower `Decode` layer decodes there) ends that message
    /// alone, as a future that panics does: the delivery, dropped in the
    /// unwind, is redelivered. False then.
    fn start<S>(&mut self, service: &mut S, delivery: Delivery, kind: Kind) -> bool
    where
        S: Service<Delivery, Future = F>,
    {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.call(delivery))) {
            Ok(future) => {
                self.in_flight.push(Slot::new(future, kind));
                true
            }
            Err(panic) => {
                self.record(Done::Panicked {
                    panic: crate::panic::panic_text(panic.as_ref()),
                    kind,
                });
                false
            }
        }
    }

    /// Waits for `wanted`, polling in-flight work meanwhile; `wanted` is
    /// polled only while fewer than `room` messages are in flight, and is
    /// kept (not re-created) while messages settle.
    async fn settling<T>(
        &mut self,
        mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
        states: &mut BreakerWatch,
        state: BreakerState,
        room: usize,
        wanted: impl Future<Output = T>,
    ) -> Waited<T> {
        tokio::pin!(wanted);
        loop {
            // A change is seen here, before anything more is taken; the
            // wait for one is polled last, so a turn that has work ready
            // does not register (and drop) a waiter on the breaker.
            if states.moved_from(state) {
                return Waited::Changed;
            }
            tokio::select! {
                biased;
                () = &mut stopping => return Waited::Stop,
                Some(done) = self.in_flight.next() => {
                    self.record(done);
                    if self.halted.is_some() {
                        return Waited::Stop;
                    }
                }
                got = &mut wanted, if self.in_flight.len() < room => return Waited::Got(got),
                () = states.changed(state) => return Waited::Changed,
                _ = self.tick.tick() => self.pulse.beat(),
            }
        }
    }

    /// Awaits `wanted` (the source pausing or resuming, the service's
    /// readiness), polling in-flight work meanwhile: no message waits on the
    /// runner, and a service that waits for its own calls cannot deadlock.
    async fn polling<T>(&mut self, wanted: impl Future<Output = T>) -> T {
        tokio::pin!(wanted);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next() => self.record(done),
                got = &mut wanted => return got,
                _ = self.tick.tick() => self.pulse.beat(),
            }
        }
    }

    /// Waits until the probe settled, polling the other in-flight work too;
    /// `Err` on shutdown or a halt.
    async fn settle_probe(
        &mut self,
        mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<(), ()> {
        while self.probing {
            tokio::select! {
                biased;
                () = &mut stopping => return Err(()),
                Some(done) = self.in_flight.next() => {
                    self.record(done);
                    if self.halted.is_some() {
                        return Err(());
                    }
                }
                _ = self.tick.tick() => self.pulse.beat(),
            }
        }
        Ok(())
    }

    /// Counts one ended message: in the summary, for the breaker (unless
    /// postponed by a pause), and as the halt's cause if its letter can
    /// never be written.
    fn record(&mut self, done: Done) {
        match done {
            Done::Settled { result, kind } => {
                if kind == Kind::Probe {
                    self.probing = false;
                }
                if kind != Kind::Uncounted {
                    self.breaker.record(Signal::of(&result));
                }
                if let Err(error) = &result {
                    tracing::warn!(%error, "settling a delivery failed; the broker redelivers it");
                }
                if self.halted.is_none() {
                    self.halted = halt::reason(&result);
                }
                self.summary.record(&result);
            }
            Done::Abandoned => self.summary.abandoned += 1,
            Done::Panicked { panic, kind } => {
                if kind == Kind::Probe {
                    self.probing = false;
                }
                tracing::error!(%panic, "a message panicked outside the handler; the delivery is redelivered");
                self.summary.ack_failed += 1;
            }
        }
    }

    /// Lets in-flight work finish until `deadline`, then drops the rest
    /// (each dropped delivery is redelivered).
    async fn drain(&mut self, deadline: Duration) {
        let drained = tokio::time::timeout(deadline, async {
            loop {
                tokio::select! {
                    biased;
                    done = self.in_flight.next() => match done {
                        Some(done) => self.record(done),
                        None => break,
                    },
                    _ = self.tick.tick() => self.pulse.beat(),
                }
            }
        })
        .await;
        if drained.is_err() {
            for done in self.in_flight.abandon_all().await {
                self.record(done);
            }
            tracing::warn!(
                abandoned = self.summary.abandoned,
                "shutdown deadline passed; unfinished messages are left for redelivery"
            );
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tower::service_fn;

    use super::*;

    /// A source with no deliveries whose start-up check fails `unreachable`
    /// times as unreachable, then reports `missing` (if any) or passes.
    struct Checked {
        unreachable: u32,
        missing: Option<&'static str>,
        checks: Arc<AtomicU32>,
    }

    impl Source for Checked {
        async fn preflight(&mut self) -> Result<(), SourceError> {
            let n = self.checks.fetch_add(1, Ordering::SeqCst);
            if n < self.unreachable {
                return Err(SourceError::Disconnected("broker away".into()));
            }
            match self.missing {
                Some(name) => Err(SourceError::Fatal(Box::new(MissingDestinations {
                    source_name: "q".into(),
                    missing: vec![name.into()],
                    how: "declare it".into(),
                }))),
                None => Ok(()),
            }
        }

        async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_service_whose_call_panics_fails_that_message_alone() {
        let broker = crate::memory::MemoryBroker::new();
        for body in ["fine", "boom", "also fine"] {
            broker
                .publish_now("q", crate::Message::new(body).with_message_id(body))
                .unwrap();
        }
        // `service_fn` runs its closure in `call`: it panics on the first
        // delivery of `boom` (a layer composed by hand that works in
        // `call`), and acks the rest.
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, a) = (Arc::clone(&panicked), Arc::clone(&acked));
        let service = service_fn(move |delivery: Delivery| {
            let body = String::from_utf8_lossy(&delivery.message().payload).into_owned();
            if body == "boom" && !p.swap(true, Ordering::SeqCst) {
                panic!("a bug in call");
            }
            let acked = Arc::clone(&a);
            async move {
                let (_message, acker, _token) = delivery.into_parts();
                acker.ack().await?;
                acked.lock().unwrap().push(body);
                Ok::<_, AckError>(Settled::Acked(crate::Outcome::Handled))
            }
        });
        let summary = Runner::new(broker.consume("q", 4).until_drained(), service)
            .concurrency(4)
            .run()
            .await
            .expect("the runner goes on after a call panics");
        assert!(panicked.load(Ordering::SeqCst));
        assert_eq!(summary.ack_failed, 1, "{summary:?}");
        let mut acked = acked.lock().unwrap().clone();
        acked.sort();
        assert_eq!(
            acked,
            ["also fine", "boom", "fine"],
            "the message whose call panicked was redelivered and acked"
        );
    }

    fn service() -> impl Service<Delivery, Response = Settled, Error = AckError, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|_d: Delivery| async {
            Ok::<_, AckError>(Settled::Acked(crate::Outcome::Handled))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_destination_stops_the_run_at_start_and_is_not_ready() {
        let checks = Arc::new(AtomicU32::new(0));
        let source = Checked {
            unreachable: 0,
            missing: Some("q.dlq"),
            checks: Arc::clone(&checks),
        };
        let runner = Runner::new(source, service());
        let readiness = runner.readiness();
        assert_eq!(readiness.get(), Err("starting".to_owned()));
        let Err(RunError::Source { source, .. }) = runner.run().await else {
            panic!("a missing DLQ must stop the run");
        };
        assert!(source.to_string().contains("\"q.dlq\""), "{source}");
        assert!(readiness.get().is_err_and(|why| why.contains("q.dlq")));
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_broker_is_retried_not_ready_then_ready() {
        let checks = Arc::new(AtomicU32::new(0));
        let source = Checked {
            unreachable: 3,
            missing: None,
            checks: Arc::clone(&checks),
        };
        let runner = Runner::new(source, service());
        let readiness = runner.readiness();
        let token = runner.shutdown_token();
        let run = tokio::spawn(runner.run());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            readiness
                .get()
                .is_err_and(|why| why.contains("broker away"))
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(checks.load(Ordering::SeqCst), 4, "retried with backoff");
        assert!(readiness.is_ready());
        token.cancel();
        assert!(
            run.await.unwrap().is_ok(),
            "the worker never exits for an outage"
        );
        assert_eq!(readiness.get(), Err("stopped".to_owned()));
    }

    /// A source that reports its own connection: a message it still had
    /// buffered when the broker went away does not make the runner ready,
    /// and its reconnect does, with nothing to deliver. Without
    /// `reported_by_source` the runner would infer "connected" from the
    /// buffered delivery.
    #[tokio::test(start_paused = true)]
    async fn a_source_reporting_its_connection_alone_decides_that_part() {
        struct Reporting {
            readiness: Option<Readiness>,
            steps: std::collections::VecDeque<Option<Result<Delivery, SourceError>>>,
        }
        impl Source for Reporting {
            fn attach(&mut self, health: &Health) {
                health.readiness().reported_by_source();
                self.readiness = Some(health.readiness().clone());
            }
            async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
                match self.steps.pop_front() {
                    Some(step) => step,
                    None => std::future::pending().await,
                }
            }
        }
        let broker = crate::memory::MemoryBroker::new();
        broker
            .publish_now("q", crate::Message::new(r#""x""#))
            .unwrap();
        let mut buffered = broker.consume("q", 1);
        let delivery = buffered.next().await.unwrap().unwrap();
        let source = Reporting {
            readiness: None,
            steps: [
                Some(Err(SourceError::Disconnected("broker away".into()))),
                Some(Ok(delivery)),
            ]
            .into(),
        };
        let runner = Runner::new(source, service());
        let readiness = runner.readiness();
        let token = runner.shutdown_token();
        // The source says it lost the broker before the runner takes anything.
        readiness.disconnected("the consumer is reconnecting");
        let run = tokio::spawn(runner.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            readiness.get(),
            Err("the consumer is reconnecting".to_owned()),
            "a buffered delivery is no sign the broker is back"
        );
        readiness.connected();
        assert!(readiness.is_ready(), "the source's reconnect alone");
        token.cancel();
        assert!(run.await.unwrap().is_ok());
    }

    /// The half-open probe holds back fetching until *it* settled, not until
    /// every older message did: a slow message in flight neither blocks
    /// recovery nor outlives shutdown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_probe_fetching_resumes_beside_a_slow_message() {
        use std::sync::atomic::AtomicBool;

        use crate::breaker::{BreakerConfig, BreakerState};
        use crate::memory::MemoryBroker;
        use crate::{Context, HandlerError, Message, StackBuilder, handler_fn};

        let broker = MemoryBroker::new();
        broker
            .publish_now("q", Message::new("{}").with_message_id("slow"))
            .unwrap();
        for i in 0..6 {
            broker
                .publish_now("q", Message::new("{}").with_message_id(format!("m{i}")))
                .unwrap();
        }
        let down = Arc::new(AtomicBool::new(true));
        let handled = Arc::new(AtomicU32::new(0));
        let (d, h) = (Arc::clone(&down), Arc::clone(&handled));
        let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
            .nack_delay(Duration::from_millis(20))
            .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
                let (d, h) = (Arc::clone(&d), Arc::clone(&h));
                async move {
                    if ctx.message_id() == "slow" {
                        // Runs until shutdown.
                        ctx.cancellation().cancelled().await;
                    } else if d.load(Ordering::SeqCst) {
                        return Err(HandlerError::unavailable("down"));
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }));
        let runner = Runner::new(broker.consume("q", 4), stack)
            .concurrency(4)
            .shutdown_deadline(Duration::from_secs(5))
            .with_breaker(BreakerConfig::new(3, Duration::from_millis(200)));
        let (breaker, token) = (runner.breaker(), runner.shutdown_token());
        let run = tokio::spawn(runner.run());
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while breaker.trips() == 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(breaker.trips(), 1, "three outages trip it");
        down.store(false, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while handled.load(Ordering::SeqCst) < 6 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            handled.load(Ordering::SeqCst),
            6,
            "every other message ran while the slow one is still in flight"
        );
        assert_eq!(breaker.state(), BreakerState::Closed);
        token.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the run ends on shutdown")
            .unwrap()
            .unwrap();
        assert_eq!(summary.handled, 7, "{summary}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_arrives_with_a_pause_is_not_run_until_resumed() {
        use crate::memory::MemoryBroker;
        use crate::{Context, Message, StackBuilder, handler_fn};

        let broker = MemoryBroker::new();
        let handled = Arc::new(AtomicU32::new(0));
        let h = Arc::clone(&handled);
        let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
            .nack_delay(Duration::from_millis(10))
            .build(handler_fn(move |_v: serde_json::Value, _ctx: Context| {
                let h = Arc::clone(&h);
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, crate::HandlerError>(())
                }
            }));
        let runner = Runner::new(broker.consume("q", 4), stack);
        let (breaker, token) = (runner.breaker(), runner.shutdown_token());
        let run = tokio::spawn(runner.run());
        // The runner waits on its empty source.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A pause and a message before the runner is polled again: both are
        // ready when it wakes.
        breaker.pause();
        broker
            .publish_now("q", Message::new("{}").with_message_id("m1"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            handled.load(Ordering::SeqCst),
            0,
            "nothing runs while paused, not even what arrived with the pause"
        );
        breaker.resume();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(handled.load(Ordering::SeqCst), 1, "it ran once resumed");
        token.cancel();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.handled, 1, "{summary}");
        assert_eq!(broker.stats("q").ready + broker.stats("q").unacked, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_stops_fetching_then_probes_one_message_at_a_time() {
        use std::sync::atomic::AtomicBool;

        use crate::breaker::{BreakerConfig, BreakerState};
        use crate::memory::MemoryBroker;
        use crate::{Context, HandlerError, Message, StackBuilder, handler_fn};

        let broker = MemoryBroker::new();
        for i in 0..10 {
            broker
                .publish_now("q", Message::new("{}").with_message_id(format!("m{i}")))
                .unwrap();
        }
        let down = Arc::new(AtomicBool::new(true));
        let (calls, handled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (d, c, h) = (Arc::clone(&down), Arc::clone(&calls), Arc::clone(&handled));
        let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
            .nack_delay(Duration::from_millis(100))
            .build(handler_fn(move |_v: serde_json::Value, _ctx: Context| {
                let (d, c, h) = (Arc::clone(&d), Arc::clone(&c), Arc::clone(&h));
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return Err(HandlerError::unavailable("down"));
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }));
        let runner = Runner::new(broker.consume("q", 1), stack)
            .with_breaker(BreakerConfig::new(3, Duration::from_secs(1)));
        let (breaker, readiness, token) = (
            runner.breaker(),
            runner.readiness(),
            runner.shutdown_token(),
        );
        let run = tokio::spawn(runner.run());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "tripped by exactly 3 outages"
        );
        assert!(readiness.get().is_err_and(|why| why.contains("open")));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "nothing fetched while open"
        );
        let mut waited = Duration::ZERO;
        while calls.load(Ordering::SeqCst) == 3 && waited < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one probe after the cool-down"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "the failed probe reopened it"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4, "one message at a time");
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(readiness.is_ready());
        assert_eq!(
            handled.load(Ordering::SeqCst),
            10,
            "every message ran once it recovered"
        );
        breaker.pause();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(readiness.get().is_err_and(|why| why.contains("paused")));
        breaker.resume();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(readiness.is_ready());
        token.cancel();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.handled, 10, "{summary}");
        assert_eq!(summary.dead_lettered, 0, "{summary}");
    }
}
