//! The driver's state for one run ([`Run`]): the in-flight messages, what
//! they settled, and the waits that poll them while the loop waits for
//! something else.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::Service;

use super::halt;
use super::in_flight::{Done, InFlight, Kind, Slot};
use super::liveness::{BEAT_EVERY, Pulse};
use super::summary::Summary;
use crate::ack::Settled;
use crate::breaker::{Breaker, BreakerState, BreakerWatch, Signal};
use crate::delivery::Delivery;
use crate::error::AckError;

/// What one run holds: its in-flight messages and what they settled.
pub(super) struct Run<F> {
    pub(super) in_flight: InFlight<F>,
    pub(super) summary: Summary,
    pub(super) breaker: Breaker,
    /// Set by the first delivery whose letter can never be written.
    pub(super) halted: Option<String>,
    /// True while the half-open breaker's probe is in flight.
    pub(super) probing: bool,
    /// The driver loop's liveness.
    pub(super) pulse: Pulse,
    /// Beats the liveness while every wait is idle.
    pub(super) tick: tokio::time::Interval,
}

/// The idle loop's timer: fires every [`BEAT_EVERY`], late ticks skipped.
pub(super) fn idle_tick() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(BEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// How a wait that polled in-flight work meanwhile ended.
pub(super) enum Waited<T> {
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
    pub(super) fn start<S>(&mut self, service: &mut S, delivery: Delivery, kind: Kind) -> bool
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
                    panic: crate::catch_panic::panic_text(panic.as_ref()),
                    kind,
                });
                false
            }
        }
    }

    /// Waits for `wanted`, polling in-flight work meanwhile; `wanted` is
    /// polled only while fewer than `room` messages are in flight, and is
    /// kept (not re-created) while messages settle.
    ///
    /// Shutdown (`shutdown`, which `stopping` waits for) is read at the top
    /// of each turn, before anything more is taken; the wait for it is
    /// polled only when nothing else is ready (a turn with work ready does
    /// not poll a waiter).
    pub(super) async fn settling<T>(
        &mut self,
        shutdown: &CancellationToken,
        mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
        states: &mut BreakerWatch,
        state: BreakerState,
        room: usize,
        wanted: impl Future<Output = T>,
    ) -> Waited<T> {
        tokio::pin!(wanted);
        let mut first = true;
        loop {
            if shutdown.is_cancelled() {
                return Waited::Stop;
            }
            // A change is seen here, before anything more is taken; the
            // wait for one is polled last, so a turn that has work ready
            // does not register (and drop) a waiter on the breaker.
            if states.moved_from(state) {
                return Waited::Changed;
            }
            // What is wanted is most often ready at once (a ready service,
            // a source with deliveries waiting), and the loop has just
            // settled what finished: asked first, once, it costs no turn
            // of the select below.
            if std::mem::take(&mut first)
                && self.in_flight.len() < room
                && let Poll::Ready(got) = futures::poll!(wanted.as_mut())
            {
                return Waited::Got(got);
            }
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next() => {
                    self.record(done);
                    if self.halted.is_some() {
                        return Waited::Stop;
                    }
                }
                () = &mut stopping => return Waited::Stop,
                got = &mut wanted, if self.in_flight.len() < room => return Waited::Got(got),
                () = states.changed(state) => return Waited::Changed,
                _ = self.tick.tick() => self.pulse.beat(),
            }
        }
    }

    /// Awaits `wanted` (the source pausing or resuming, the service's
    /// readiness), polling in-flight work meanwhile: no message waits on the
    /// runner, and a service that waits for its own calls cannot deadlock.
    pub(super) async fn polling<T>(&mut self, wanted: impl Future<Output = T>) -> T {
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
    pub(super) async fn settle_probe(
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
    pub(super) fn record(&mut self, done: Done) {
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
    pub(super) async fn drain(&mut self, deadline: Duration) {
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
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
