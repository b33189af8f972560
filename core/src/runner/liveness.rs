//! [`Liveness`]: when a loop last turned, for a liveness probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often an idle loop beats at least ([`Liveness`] readers allow for it).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// When one loop (a runner's driver, a Kafka consumer's poll thread) last
/// turned. The loop calls [`beat`](Self::beat); a liveness probe reads
/// [`silent_for`](Self::silent_for). An idle loop still beats (at least
/// every [`BEAT_EVERY`]), so silence means the loop is stuck (a handler
/// blocking the driver's thread, a dead thread), never that there is no
/// traffic, the broker or the store is down, or the runner is paused.
///
/// Cheap to clone; every clone sees the same loop.
///
/// ```
/// use std::time::Duration;
/// use backstop::runner::Liveness;
///
/// let poll_loop = Liveness::new("poll thread");
/// poll_loop.beat();
/// assert!(poll_loop.silent_for() < Duration::from_secs(1));
/// assert_eq!(poll_loop.name(), "poll thread");
/// ```
#[derive(Clone, Debug)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// Milliseconds since [`epoch`] of the last beat, plus one; 0 once the
    /// loop ended (an ended loop is not a stuck one).
    last: AtomicU64,
}

/// The process's reference instant.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl Liveness {
    /// A loop called `name` (shown by a failing probe), beating now.
    pub fn new(name: impl Into<String>) -> Self {
        Liveness {
            inner: Arc::new(Inner {
                name: name.into(),
                last: AtomicU64::new(now_ms()),
            }),
        }
    }

    /// The loop's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.inner.last.store(now_ms(), Ordering::Relaxed);
    }

    /// The loop ended on purpose: it no longer counts as stuck.
    pub fn end(&self) {
        self.inner.last.store(0, Ordering::Relaxed);
    }

    /// True once [`end`](Self::end) was called.
    pub fn ended(&self) -> bool {
        self.inner.last.load(Ordering::Relaxed) == 0
    }

    /// How long since the loop last turned (zero once it ended).
    pub fn silent_for(&self) -> Duration {
        match self.inner.last.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            last => Duration::from_millis(now_ms().saturating_sub(last)),
        }
    }
}

/// Beats a [`Liveness`] from a busy loop every 16 turns (a clock read
/// spread over 16 turns), and ends it when dropped: a run that returns or
/// whose future is dropped is not a stuck loop.
#[derive(Debug)]
pub(super) struct Pulse {
    liveness: Liveness,
    turns: u8,
}

impl Pulse {
    pub(super) fn new(liveness: Liveness) -> Self {
        Pulse { liveness, turns: 0 }
    }

    /// One turn of the loop.
    pub(super) fn turn(&mut self) {
        self.turns = self.turns.wrapping_add(1);
        if self.turns.is_multiple_of(16) {
            self.liveness.beat();
        }
    }

    /// A beat now (an idle loop's timer fired).
    pub(super) fn beat(&self) {
        self.liveness.beat();
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.liveness.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_grows_until_the_next_beat_and_an_ended_loop_is_never_silent() {
        let live = Liveness::new("l");
        std::thread::sleep(Duration::from_millis(30));
        assert!(live.silent_for() >= Duration::from_millis(25));
        live.beat();
        assert!(live.silent_for() < Duration::from_millis(25));
        live.end();
        std::thread::sleep(Duration::from_millis(5));
        assert!(live.ended());
        assert_eq!(live.silent_for(), Duration::ZERO);
    }

    #[test]
    fn a_busy_loop_beats_every_16_turns_and_a_dropped_one_ends() {
        let live = Liveness::new("l");
        std::thread::sleep(Duration::from_millis(30));
        let mut pulse = Pulse::new(live.clone());
        for _ in 0..15 {
            pulse.turn();
        }
        assert!(live.silent_for() >= Duration::from_millis(25));
        pulse.turn();
        assert!(live.silent_for() < Duration::from_millis(25));
        drop(pulse);
        assert!(live.ended());
    }
}
