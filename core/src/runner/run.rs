//! The run loop: [`Runner::run`] checks the source, then fetches, drives
//! and settles deliveries under the breaker until the source ends, shutdown
//! or a halt, and drains what is in flight.

use std::time::Duration;

use tower::{Service, ServiceExt};

use super::driver::{Run, Waited, idle_tick, sleep_until};
use super::in_flight::{Done, InFlight, Kind, Slot};
use super::liveness::{Liveness, Pulse};
use super::{HALTED, RunError, Runner, Source, SourceError, Summary};
use crate::ack::Settled;
use crate::breaker::{BREAKER_STATE, BreakerState};
use crate::delivery::Delivery;
use crate::error::AckError;
use crate::metrics::READY;

impl<Src, Svc> Runner<Src, Svc>
where
    Src: Source,
    Svc: Service<Delivery, Response = Settled, Error = AckError> + Send + 'static,
    Svc::Future: Send + 'static,
{
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
        // This run's view of the shutdown token: a child, cancelled with it.
        // Each turn asks it whether to stop, and handlers ask it too; asking
        // takes the token's lock, and a child's lock is this runner's own,
        // not one shared with every runner given the same token
        // (`with_shutdown`). The runner stopping still cancels the token
        // itself (below), and so every runner that shares it. It is every
        // delivery's cancellation too, shared behind one `Arc` (a token's
        // clone takes its tree's lock; an `Arc`'s does not).
        let shutdown = std::sync::Arc::new(self.shutdown.child_token());
        // One waiter on the shutdown token for the whole run, not one per wait.
        let stopping = (*shutdown).clone().cancelled_owned();
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
                        let delivery = held
                            .postponed()
                            .with_shared_cancellation(std::sync::Arc::clone(&shutdown));
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
                    &shutdown,
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
                .settling(
                    &shutdown,
                    stopping.as_mut(),
                    &mut states,
                    state,
                    usize::MAX,
                    next,
                )
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
                        .with_shared_cancellation(std::sync::Arc::clone(&shutdown));
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
                    let delivery =
                        delivery.with_shared_cancellation(std::sync::Arc::clone(&shutdown));
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
}
