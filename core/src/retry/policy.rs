use std::time::Duration;

use rand::Rng;

use crate::attempt;

/// How often and how late to retry a transient failure.
///
/// Backoff is exponential with full jitter: the delay before attempt `n + 1`
/// is uniform in `[0, min(max_delay, initial * 2^(n-1))]`. A handler's
/// `retry_after` replaces the computed delay. Delays longer than
/// `in_process_limit` go through a [`RetrySink`](super::RetrySink) when one is
/// configured (the message is republished and acked), so no worker sleeps
/// on them.
///
/// ```
/// use std::time::Duration;
///
/// use backstop::RetryPolicy;
///
/// let policy = RetryPolicy::retries(5).backoff(Duration::from_millis(100), Duration::from_secs(1));
/// // The ceiling doubles from `initial` and stops at `max_delay`.
/// assert_eq!(policy.ceiling(1), Duration::from_millis(100));
/// assert_eq!(policy.ceiling(3), Duration::from_millis(400));
/// assert_eq!(policy.ceiling(8), Duration::from_secs(1));
/// // The delay actually waited is drawn at random below the ceiling.
/// for failed in 1..=8 {
///     assert!(policy.delay(failed) <= policy.ceiling(failed));
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// At most this many attempts (`retries + 1`).
    pub max_attempts: u32,
    /// The first backoff's upper bound.
    pub initial: Duration,
    /// No backoff is longer than this.
    pub max_delay: Duration,
    /// Give up once this much time passed since the first failure.
    pub max_elapsed: Option<Duration>,
    /// Longer delays are handed to the retry sink, if there is one.
    pub in_process_limit: Duration,
}

/// The longest `retry_after` a handler's [`HandlerError`](crate::error::HandlerError)
/// is honoured with: a longer one (a bogus `Retry-After`, an overflowing
/// computation) waits this long instead.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: attempt::max_attempts(4),
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: None,
            in_process_limit: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// A policy allowing `retries` retries (so `retries + 1` attempts), other settings default.
    pub fn retries(retries: u32) -> Self {
        RetryPolicy {
            max_attempts: attempt::max_attempts(retries),
            ..RetryPolicy::default()
        }
    }

    /// No retries: one attempt.
    pub fn none() -> Self {
        Self::retries(0)
    }

    /// Sets the backoff bounds.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max_delay: Duration) -> Self {
        self.initial = initial;
        self.max_delay = max_delay.max(initial);
        self
    }

    /// Sets the most time since the first failure.
    #[must_use]
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Sets the longest delay slept in process.
    #[must_use]
    pub fn in_process_limit(mut self, limit: Duration) -> Self {
        self.in_process_limit = limit;
        self
    }

    /// The upper bound of the delay after failed attempt `failed` (1-based).
    pub fn ceiling(&self, failed: u32) -> Duration {
        super::backoff::doubled(self.initial, failed.saturating_sub(1), self.max_delay)
    }

    /// A jittered delay after failed attempt `failed`.
    pub fn delay(&self, failed: u32) -> Duration {
        let ceiling = self.ceiling(failed);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// `delay` with "equal jitter": uniform in `[delay / 2, delay]`. For waits
/// that must not shrink to nothing (nack backoff, reconnects), where
/// [`RetryPolicy::delay`]'s full jitter could pick zero.
pub fn equal_jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    let extra = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max_delay() {
        let p =
            RetryPolicy::retries(10).backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(60), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let p =
            RetryPolicy::retries(10).backoff(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..200).map(|_| p.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d != delays[0]), "full jitter varies");
    }

    #[test]
    fn equal_jitter_keeps_at_least_half() {
        for _ in 0..100 {
            let d = equal_jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn retries_counts_attempts_by_the_rule() {
        assert_eq!(RetryPolicy::retries(5).max_attempts, 6);
        assert_eq!(RetryPolicy::none().max_attempts, 1);
    }
}
