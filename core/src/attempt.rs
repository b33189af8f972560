//! The attempt rule, in one place.
//!
//! An attempt is one run of the handler. Numbering starts at 1; `retries = N`
//! means at most `N + 1` attempts. The number travels in
//! [`wire::ATTEMPT`] on every republished copy and in
//! the idempotency store. A redrive from the DLQ starts a new count.

use crate::message::Headers;
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

/// The attempt a delivery runs as, or `Err` with the confirmed attempt when
/// that is already past `max_attempts` (dead-lettered as `exhausted`
/// without running).
///
/// `claimed` is the attempt the delivery says it is for (its header, raised
/// by [`resume`] to what the idempotency store remembers); `confirmed` is
/// the part of it backstop vouches for: the store's count of failed runs
/// plus one, or the header of a copy consumed from backstop's own Kafka
/// retry topic, else [`FIRST`]. A claim beyond the confirmed count is
/// believed only up to the last attempt: a header written by a producer can
/// shorten a message's retries but never skip its run, and backstop's own
/// RabbitMQ retry copies (which come back through the source queue, where
/// nothing tells them from a producer's message) still run out at the
/// maximum.
pub fn admit(claimed: u32, confirmed: u32, max_attempts: u32) -> Result<u32, u32> {
    if confirmed > max_attempts {
        return Err(confirmed);
    }
    Ok(claimed.min(max_attempts).max(confirmed).max(FIRST))
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
        h.insert(wire::ATTEMPT, "3");
        assert_eq!(from_headers(&h), 3);
        h.insert(wire::ATTEMPT, "zero");
        assert_eq!(from_headers(&h), 1);
        h.insert(wire::ATTEMPT, "0");
        assert_eq!(from_headers(&h), 1);
    }

    #[test]
    fn an_unconfirmed_claim_never_skips_the_run() {
        // A forged header far past the maximum: one run, as the last attempt.
        assert_eq!(admit(u32::MAX, FIRST, 5), Ok(5));
        assert_eq!(admit(99, FIRST, 5), Ok(5));
        // backstop's own copy at the last attempt runs once more and then
        // is exhausted (attempt 5 of 5), so it never loops.
        assert_eq!(admit(5, FIRST, 5), Ok(5));
        assert_eq!(admit(3, FIRST, 5), Ok(3));
        // Confirmed by the store or a retry topic: believed in full.
        assert_eq!(admit(7, 7, 5), Err(7));
        assert_eq!(admit(2, 4, 5), Ok(4));
        assert_eq!(admit(0, 0, 5), Ok(1));
    }

    #[test]
    fn resume_takes_the_larger_count() {
        assert_eq!(resume(1, 0), 1);
        assert_eq!(resume(1, 3), 4);
        assert_eq!(resume(5, 2), 5);
    }
}
