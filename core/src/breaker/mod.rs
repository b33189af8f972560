//! The kill switch: a circuit breaker over outage signals that stops a
//! [`Runner`](crate::runner::Runner) from fetching while a dependency is down.
//!
//! Every settled delivery is a signal. An *outage* (the idempotency store
//! down, the inbox unable to connect, a handler's
//! [`HandlerError::Unavailable`](crate::error::HandlerError::Unavailable)) counts
//! toward the trip; any other result resets the count. With
//! [`BreakerConfig::count_transient`], transient failures that left the
//! process (a broker-delayed retry, a dead letter of kind `exhausted` or
//! `timeout`) count too.
//!
//! ```text
//! closed ──N outages in a row──▶ open ──cool-down──▶ half-open ──probe ok──▶ closed
//!                                  ▲                     │
//!                                  └──── probe outage ───┘
//! pause() from any state ──▶ paused ──resume()──▶ closed
//! ```
//!
//! While open, half-open or paused the runner is not ready
//! ([`Readiness`](crate::runner::Readiness)); while open or paused it fetches
//! nothing (RabbitMQ cancels its consumer, Kafka pauses its partitions and
//! keeps polling); half-open it runs one message at a time until a probe
//! settles without an outage. The state is the gauge
//! [`BREAKER_STATE`].
//!
//! The state machine is written here rather than taken from a crate: the
//! maintained ones (`failsafe`) read `std::time::Instant`, which tokio's
//! paused test clock cannot drive, and let every caller through when
//! half-open, where a consumer must probe with exactly one message.
//!
//! ```
//! use std::time::Duration;
//! use backstop::breaker::{Breaker, BreakerConfig, BreakerState};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = Breaker::new(BreakerConfig::new(3, Duration::from_secs(10)));
//! breaker.record_outage();
//! breaker.record_outage();
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! breaker.record_outage();
//! assert_eq!(breaker.state(), BreakerState::Open);
//!
//! breaker.pause();
//! assert_eq!(breaker.state(), BreakerState::Paused);
//! breaker.resume();
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # }
//! ```

mod signal;

pub use self::signal::Signal;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Gauge of the breaker's state: 0 closed, 1 half-open, 2 open, 3 paused.
pub const BREAKER_STATE: &str = "backstop_breaker_state";

/// When the breaker trips and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    trip_after: u32,
    cool_down: Duration,
    count_transient: bool,
}

impl BreakerConfig {
    /// Trips after `trip_after` outage signals in a row (at least 1) and
    /// stays open `cool_down` before probing.
    pub fn new(trip_after: u32, cool_down: Duration) -> Self {
        BreakerConfig {
            trip_after: trip_after.max(1),
            cool_down,
            count_transient: false,
        }
    }

    /// A breaker that never trips by itself (only [`Breaker::pause`] stops
    /// the runner): the runner's default.
    pub const fn manual() -> Self {
        BreakerConfig {
            trip_after: u32::MAX,
            cool_down: Duration::ZERO,
            count_transient: false,
        }
    }

    /// Also counts transient handler failures that left the process (a
    /// broker-delayed retry, a dead letter of kind `exhausted` or `timeout`).
    #[must_use]
    pub const fn count_transient(mut self, yes: bool) -> Self {
        self.count_transient = yes;
        self
    }

    /// Outage signals in a row that trip the breaker.
    pub const fn trip_after(&self) -> u32 {
        self.trip_after
    }

    /// How long the breaker stays open before it probes.
    pub const fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

impl Default for BreakerConfig {
    /// Trips after 5 outage signals in a row, probes after 10 s.
    fn default() -> Self {
        BreakerConfig::new(5, Duration::from_secs(10))
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Consuming normally.
    Closed,
    /// Probing: one message at a time until one settles without an outage.
    HalfOpen,
    /// Tripped: fetching nothing until the cool-down ends.
    Open,
    /// Paused by hand ([`Breaker::pause`]) until [`Breaker::resume`].
    Paused,
}

impl BreakerState {
    /// `closed`, `half_open`, `open` or `paused`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
            BreakerState::Paused => "paused",
        }
    }

    /// The state's number in [`Shared::state`].
    const fn to_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
            BreakerState::Paused => 3,
        }
    }

    /// The state numbered `n` by [`to_u8`](Self::to_u8).
    const fn from_u8(n: u8) -> Self {
        match n {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            2 => BreakerState::Open,
            _ => BreakerState::Paused,
        }
    }

    /// The value of the [`BREAKER_STATE`] gauge.
    pub const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
            BreakerState::Paused => 3.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct Inner {
    config: BreakerConfig,
    /// Outage signals in a row while closed.
    outages: u32,
    /// When an open breaker may probe.
    open_until: Option<Instant>,
    /// Times the breaker tripped since it was made.
    trips: u64,
    /// The runner's labelled [`BREAKER_STATE`] gauge, once it runs.
    gauge: Option<metrics::Gauge>,
}

/// The kill switch; see the [module docs](self). Cheap to clone; every
/// clone is the same breaker.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
    state: watch::Sender<BreakerState>,
}

/// What every clone of a breaker and its watchers share.
///
/// The state is read for every message (by the run loop, and by each
/// settled delivery's signal), so it is mirrored in an atomic: a read is a
/// load, not the watch channel's read lock. The watch channel is what a
/// wait for a change waits on; both are written together, the atomic
/// inside the channel's write.
#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The state ([`BreakerState::to_u8`]).
    state: AtomicU8,
    /// True while `inner.outages` is not 0: a success, the common signal,
    /// then has nothing to reset and takes no lock.
    outages: AtomicBool,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(BreakerConfig::manual())
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let (state, _) = watch::channel(BreakerState::Closed);
        Breaker {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    config,
                    outages: 0,
                    open_until: None,
                    trips: 0,
                    gauge: None,
                }),
                state: AtomicU8::new(BreakerState::Closed.to_u8()),
                outages: AtomicBool::new(false),
            }),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: BreakerState) {
        let changed = self.state.send_if_modified(|now| {
            let changed = *now != state;
            *now = state;
            self.shared.state.store(state.to_u8(), Ordering::Release);
            changed
        });
        if changed {
            tracing::warn!(state = %state, "consumption breaker changed state");
            match &self.lock().gauge {
                Some(gauge) => gauge.set(state.gauge()),
                None => metrics::gauge!(BREAKER_STATE).set(state.gauge()),
            }
        }
    }

    /// Shows the state on `gauge` (the runner's labelled [`BREAKER_STATE`]) from now on.
    pub(crate) fn report_to(&self, gauge: metrics::Gauge) {
        gauge.set(self.state().gauge());
        self.lock().gauge = Some(gauge);
    }

    /// The configuration.
    pub fn config(&self) -> BreakerConfig {
        self.lock().config
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// How many times the breaker tripped (closed or half-open to open).
    pub fn trips(&self) -> u64 {
        self.lock().trips
    }

    /// Waits until the state changes (or returns at once if it changed
    /// since `seen`).
    pub async fn changed(&self, seen: BreakerState) {
        self.watch().changed(seen).await;
    }

    /// A watcher of the state, for a loop that waits for changes many times
    /// (subscribing once instead of per wait).
    pub(crate) fn watch(&self) -> BreakerWatch {
        BreakerWatch(self.state.subscribe(), Arc::clone(&self.shared))
    }

    /// When an open breaker may probe; `None` unless open.
    pub fn probe_at(&self) -> Option<Instant> {
        (self.state() == BreakerState::Open)
            .then(|| self.lock().open_until)
            .flatten()
    }

    /// Moves an open breaker whose cool-down ended to half-open; returns
    /// the state after.
    pub fn poll_state(&self) -> BreakerState {
        let state = self.state();
        if state == BreakerState::Open {
            let due = self.lock().open_until.is_none_or(|t| Instant::now() >= t);
            if due {
                self.set(BreakerState::HalfOpen);
                return BreakerState::HalfOpen;
            }
        }
        state
    }

    /// Records one settled delivery's signal.
    pub fn record(&self, signal: Signal) {
        let counted = match signal {
            Signal::Outage => true,
            Signal::TransientFailure => self.lock().config.count_transient,
            Signal::Success => false,
            Signal::Neutral => return,
        };
        match self.state() {
            // Nothing in a row to reset: no lock (a signal settled at the
            // same moment as an outage may be ordered either side of it).
            BreakerState::Closed if !counted && !self.shared.outages.load(Ordering::Acquire) => {}
            BreakerState::Closed => {
                let trip = {
                    let mut inner = self.lock();
                    if counted {
                        inner.outages = inner.outages.saturating_add(1);
                    } else {
                        inner.outages = 0;
                    }
                    self.shared
                        .outages
                        .store(inner.outages > 0, Ordering::Release);
                    inner.outages >= inner.config.trip_after
                };
                if trip {
                    self.trip();
                }
            }
            BreakerState::HalfOpen if counted => self.trip(),
            BreakerState::HalfOpen => self.close(),
            // Late results of deliveries started before the trip, or while paused.
            BreakerState::Open | BreakerState::Paused => {}
        }
    }

    /// Records an outage signal (a store or dependency down).
    pub fn record_outage(&self) {
        self.record(Signal::Outage);
    }

    /// Records a delivery that settled without an outage.
    pub fn record_success(&self) {
        self.record(Signal::Success);
    }

    fn trip(&self) {
        {
            let mut inner = self.lock();
            inner.outages = 0;
            self.shared.outages.store(false, Ordering::Release);
            inner.trips += 1;
            inner.open_until = Some(Instant::now() + inner.config.cool_down);
        }
        self.set(BreakerState::Open);
    }

    fn close(&self) {
        {
            let mut inner = self.lock();
            inner.outages = 0;
            self.shared.outages.store(false, Ordering::Release);
            inner.open_until = None;
        }
        self.set(BreakerState::Closed);
    }

    /// Stops consumption by hand until [`resume`](Self::resume), whatever
    /// the signals say.
    pub fn pause(&self) {
        self.set(BreakerState::Paused);
    }

    /// Ends a manual pause (or an open breaker's wait): consumption resumes closed.
    pub fn resume(&self) {
        self.close();
    }
}

/// Watches a [`Breaker`]'s state; see [`Breaker::watch`].
#[derive(Debug)]
pub(crate) struct BreakerWatch(watch::Receiver<BreakerState>, Arc<Shared>);

impl Shared {
    fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }
}

impl BreakerWatch {
    /// True if the state is no longer `seen` (an atomic load, no waiting).
    pub(crate) fn moved_from(&self, seen: BreakerState) -> bool {
        self.1.state() != seen
    }

    /// Waits until the state is other than `seen` (at once if it already is).
    pub(crate) async fn changed(&mut self, seen: BreakerState) {
        // The sender lives in the breaker, which the caller holds, so this
        // only ends on a change.
        let _ = self.0.wait_for(|now| *now != seen).await;
    }
}

#[cfg(test)]
mod tests;
