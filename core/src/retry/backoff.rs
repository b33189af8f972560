//! Exponential backoff with jitter, for waits that repeat until something
//! comes back (a reconnect): the doubling of [`RetryPolicy`](super::RetryPolicy)'s
//! delays and [`equal_jitter`](super::equal_jitter), with state.

use std::time::Duration;

/// Doubles from `initial` up to `max`; each delay is jittered to `[d/2, d]`.
///
/// ```
/// use std::time::Duration;
/// use backstop::retry::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// backoff.reset(); // after a success
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms), doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The next delay (jittered); the one after it is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = doubled(self.next, 1, self.max);
        super::equal_jitter(ceiling)
    }

    /// Starts over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `delay` doubled `times` times, at most `max`: the one doubling rule of
/// every backoff.
pub(crate) fn doubled(delay: Duration, times: u32, max: Duration) -> Duration {
    delay.saturating_mul(1u32 << times.min(31)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100) && delays[0] >= Duration::from_millis(50));
        assert!(delays[1] <= Duration::from_millis(200) && delays[1] >= Duration::from_millis(100));
        assert!(delays[4] <= Duration::from_millis(400) && delays[4] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
