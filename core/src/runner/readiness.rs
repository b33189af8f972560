//! [`Readiness`]: whether a runner is consuming, for a health endpoint.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Whether a [`Runner`](super::Runner) is ready: its source passed the
/// start-up check ([`Source::preflight`](super::Source::preflight)) and is
/// connected. Not ready while starting, while the broker cannot be reached
/// (the source reconnects with backoff), while its [breaker](crate::breaker)
/// is open, half-open or paused, and after the run stopped, each with a
/// reason. Cheap to clone; every clone sees the same state.
///
/// Two parts make it: the runner's own view (starting, breaker, stopped)
/// and the connection's. A source that knows when it is connected reports
/// it ([`connected`](Self::connected), [`disconnected`](Self::disconnected);
/// see [`Source::attach`](super::Source::attach)), so a runner whose broker
/// came back is ready again without waiting for a message; for any other
/// source the runner infers the connection from what `next` returns.
#[derive(Clone, Debug)]
pub struct Readiness {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// [`RUN_OK`] and [`CONNECTED`], as `state` has them: the driver asks
    /// every turn, so the answer is read without the lock.
    ok: AtomicU8,
}

/// The runner's own part is `Ok`.
const RUN_OK: u8 = 1;
/// The connection's part is `Ok`.
const CONNECTED: u8 = 2;

#[derive(Debug)]
struct State {
    run: Result<(), String>,
    connection: Result<(), String>,
    /// The source reports its connection itself: the runner does not infer it.
    by_source: bool,
    /// Called with every change of [`Readiness::get`]'s verdict.
    gauge: Option<metrics::Gauge>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    run: Err("starting".to_owned()),
                    connection: Ok(()),
                    by_source: false,
                    gauge: None,
                }),
                ok: AtomicU8::new(CONNECTED),
            }),
        }
    }
}

impl Readiness {
    /// True when the runner is consuming.
    pub fn is_ready(&self) -> bool {
        self.shared.ok.load(Ordering::Acquire) == RUN_OK | CONNECTED
    }

    /// `Ok` when ready, else why not (the runner's reason first).
    pub fn get(&self) -> Result<(), String> {
        let state = self.lock();
        state.run.clone().and(state.connection.clone())
    }

    /// The connection's part alone: `Ok` when connected, else why not.
    pub fn connection(&self) -> Result<(), String> {
        self.lock().connection.clone()
    }

    /// Called by a source's [`attach`](super::Source::attach) when it
    /// reports [`connected`](Self::connected) and
    /// [`disconnected`](Self::disconnected) itself: the runner then stops
    /// inferring the connection from what `next` returns (a message still
    /// buffered when the broker went away is not a sign it is back).
    pub fn reported_by_source(&self) {
        self.lock().by_source = true;
    }

    /// True when the source reports its connection itself.
    pub(crate) fn by_source(&self) -> bool {
        self.lock().by_source
    }

    /// The source is connected and consuming.
    pub fn connected(&self) {
        self.update(|state| state.connection = Ok(()));
    }

    /// The source lost its broker (or has not joined yet), because `why`.
    pub fn disconnected(&self, why: impl Into<String>) {
        let why = why.into();
        self.update(|state| state.connection = Err(why));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        change(&mut state);
        let ok =
            u8::from(state.run.is_ok()) * RUN_OK + u8::from(state.connection.is_ok()) * CONNECTED;
        // Written under the lock, so the flags follow the state's order of changes.
        self.shared.ok.store(ok, Ordering::Release);
        if let Some(gauge) = &state.gauge {
            gauge.set(if ok == RUN_OK | CONNECTED { 1.0 } else { 0.0 });
        }
    }

    /// The runner's own part: `Ok` unless starting, paused by the breaker, halted or stopped.
    pub(crate) fn run_state(&self) -> Result<(), String> {
        if self.shared.ok.load(Ordering::Acquire) & RUN_OK != 0 {
            return Ok(());
        }
        self.lock().run.clone()
    }

    pub(crate) fn ready(&self) {
        self.update(|state| state.run = Ok(()));
    }

    pub(crate) fn not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|state| state.run = Err(reason));
    }

    /// Mirrors the verdict into `gauge` (1 ready, 0 not) from now on.
    pub(crate) fn report_to(&self, gauge: metrics::Gauge) {
        self.update(|state| state.gauge = Some(gauge));
    }
}
