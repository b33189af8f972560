//! The attempt rule, in one place.
//!
//! An attempt is one run of the handler. Numbering starts at 1; `retries = N`
//! means at most `N + 1` attempts. The number travels in
//! [`wire::ATTEMPT`] on every republished copy and in
//! the idempotency store. A redrive from the DLQ starts a new count.

use crate::Headers;
use crate::wire;

/// The first attempt's number.
pub const FIRST: u32 = 1;

/// The most attempts `retries` retries allow: `retries + 1`.
pub const fn max_attempts(retries: u32) -> u32 {
    retries.saturating_add(1)
}

/// True when a message whose attempt number `attempt` just failed may not run again.
pub const fn is_exhausted(attempt: u32, max_attempts: u32) -> bool {
    attempt >= max_attempts
}

/// The attempt a delivery is for: its header, else [`FIRST`]. Garbage counts as [`FIRST`].
pub fn from_headers(headers: &Headers) -> u32 {
    headers
        .get(wire::ATTEMPT)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n >= FIRST)
        .unwrap_or(FIRST)
}

/// The attempt number a delivery runs as, given what the store remembers.
///
/// `failed_runs` is the count of failed runs the idempotency store kept for
/// the key (it survives restarts); the header counts republished copies.
pub fn resume(header_attempt: u32, failed_runs: u32) -> u32 {
    header_attempt.max(failed_runs.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_n_means_n_plus_one_attempts() {
        assert_eq!(max_attempts(0), 1);
        assert_eq!(max_attempts(5), 6);
        assert!(!is_exhausted(5, 6));
        assert!(is_exhausted(6, 6));
    }

    #[test]
    fn header_attempt_defaults_to_first() {
        let mut h = Headers::new();
        assert_eq!(from_headers(&h), 1);
        h.insert(wire::ATTEMPT.into(), "3".into());
        assert_eq!(from_headers(&h), 3);
        h.insert(wire::ATTEMPT.into(), "zero".into());
        assert_eq!(from_headers(&h), 1);
        h.insert(wire::ATTEMPT.into(), "0".into());
        assert_eq!(from_headers(&h), 1);
    }

    #[test]
    fn resume_takes_the_larger_count() {
        assert_eq!(resume(1, 0), 1);
        assert_eq!(resume(1, 3), 4);
        assert_eq!(resume(5, 2), 5);
    }
}
