//! Exponential backoff with jitter, for reconnecting.

use std::time::Duration;

/// Doubles from `initial` up to `max`; each delay is jittered to `[d/2, d]`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The next delay (jittered); the one after it is twice as long, up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        backstop::retry::equal_jitter(ceiling)
    }

    /// Starts over from the initial delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
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
