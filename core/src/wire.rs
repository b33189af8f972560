//! The header names backstop writes and reads on every broker.
//!
//! backstop writes every one of these values as UTF-8 text and reads them
//! through the text views of [`Headers`](crate::message::Headers), so the same names
//! work on RabbitMQ headers and Kafka record headers alike (a value of
//! another type, such as an AMQP integer, reads as absent). See `ARCHITECTURE.md` for the rules each name
//! follows (rewritten on every copy, incremented, carried unchanged). No
//! header routes a message: see [`inbound`](crate::inbound) for the trust model
//! (one bookkeeping exception on Kafka retry topics: [`ORIGINAL_PARTITION`]).

use std::time::{Duration, SystemTime};

/// The message id, carried unchanged on every copy (retry, DLQ, replay).
pub const MESSAGE_ID: &str = "x-backstop-message-id";
/// The 1-based number of the attempt the copy is for; incremented on each
/// republished retry. From outside it is a claim (see [`attempt::admit`](crate::attempt::admit)).
pub const ATTEMPT: &str = "x-backstop-attempt";
/// The queue or topic the message belongs to ([`Meta::origin`](crate::message::Meta::origin));
/// rewritten on every copy, informational only.
pub const ORIGINAL_SOURCE: &str = "x-backstop-original-source";
/// The Kafka partition the message was consumed from (a copy from a retry
/// topic keeps the first); informational, except that with the Kafka
/// adapter's ordered retries a retry copy's (a retry topic is written by
/// backstop only, and a main topic's values are rewritten on consumption)
/// names the parked partition its end is reported to.
pub const ORIGINAL_PARTITION: &str = "x-backstop-original-partition";
/// The Kafka offset the message was consumed at (a copy from a retry topic
/// keeps the first); informational, except as [`ORIGINAL_PARTITION`] says.
pub const ORIGINAL_OFFSET: &str = "x-backstop-original-offset";
/// The timestamp the message had when it was consumed (RFC 3339 UTC; a
/// copy from a Kafka retry topic keeps the first, whose own record
/// timestamp is the copy's): what a time to live measures a retry copy's
/// age by ([`expiry`](crate::expiry)); informational otherwise.
pub const ORIGINAL_TIMESTAMP: &str = "x-backstop-original-timestamp";
/// The Kafka consumer group that dead-lettered or deferred the message;
/// rewritten on every copy, informational only.
pub const GROUP: &str = "x-backstop-group";
/// Why the message was dead-lettered (see [`ErrorKind`](crate::error::ErrorKind)).
pub const ERROR_KIND: &str = "x-backstop-error-kind";
/// The error message that dead-lettered the message, cut to 1 KiB.
pub const ERROR: &str = "x-backstop-error";
/// When the message failed for the first time (RFC 3339, UTC).
pub const FIRST_FAILURE: &str = "x-backstop-first-failure";
/// When the message failed for the last time (RFC 3339, UTC).
pub const LAST_FAILURE: &str = "x-backstop-last-failure";
/// When a delayed-retry copy is due (RFC 3339, UTC).
pub const DUE: &str = "x-backstop-due";
/// How many times the message was redriven from a DLQ.
pub const REPLAYED: &str = "x-backstop-replayed";
/// W3C trace context, propagated unchanged.
pub const TRACEPARENT: &str = "traceparent";
/// When a message stops being worth running (RFC 3339, or milliseconds
/// since the Unix epoch), set by its producer; read by a stack with a
/// [`TimeToLive`](crate::expiry::TimeToLive).
pub const EXPIRES_AT: &str = "expires-at";

/// Every header name above, and the one a handler's outgoing messages
/// carry ([`CAUSED_BY`](crate::outgoing::CAUSED_BY)).
const OWN_NAMES: &[&str] = &[
    MESSAGE_ID,
    ATTEMPT,
    ORIGINAL_SOURCE,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    GROUP,
    ERROR_KIND,
    ERROR,
    FIRST_FAILURE,
    LAST_FAILURE,
    DUE,
    REPLAYED,
    TRACEPARENT,
    EXPIRES_AT,
    crate::outgoing::CAUSED_BY,
];

/// The constant of `name`, when it is one of the header names above.
pub(crate) fn own_name(name: &str) -> Option<&'static str> {
    OWN_NAMES.iter().copied().find(|own| *own == name)
}

/// The longest error text written to [`ERROR`], in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// The latest time the wire format can write: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MILLIS: u64 = 253_402_300_799_999;

/// Formats a time as RFC 3339 UTC with millisecond precision.
///
/// RFC 3339 has four-digit years: a time before 1970 is written as the
/// epoch and one after [`MAX_TIME_MILLIS`] as that, never a panic.
pub fn format_time(time: SystemTime) -> String {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_millis(MAX_TIME_MILLIS);
    humantime::format_rfc3339_millis(time.clamp(SystemTime::UNIX_EPOCH, latest)).to_string()
}

/// Parses an RFC 3339 time written by [`format_time`] (or any RFC 3339 UTC time).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim()).ok()
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses a human duration such as `100ms`, `5s` or `1m 30s`.
///
/// `None` for anything that is not such a duration, including one too long
/// for a [`Duration`] (more than about 584 billion years).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    // humantime's nanosecond carry can overflow `Duration::new` (a panic)
    // when the seconds are near `u64::MAX`; refuse what could come close:
    // every number counted in years (humantime's largest unit) plus a
    // carried second.
    const YEAR_SECS: u128 = 31_557_600;
    let mut bound: u128 = 0;
    for digits in text.split(|c: char| !c.is_ascii_digit()) {
        if digits.is_empty() {
            continue;
        }
        let n: u128 = digits.parse().unwrap_or(u128::MAX);
        bound = bound.saturating_add(n.saturating_mul(YEAR_SECS + 1));
    }
    if bound >= u128::from(u64::MAX) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_own_name_is_known_and_nothing_else() {
        for &name in OWN_NAMES {
            assert_eq!(own_name(name), Some(name));
            assert_eq!(own_name(&name.to_uppercase()), None, "names are exact");
        }
        assert_eq!(own_name("x-backstop-"), None);
        assert_eq!(own_name(""), None);
        let distinct: std::collections::HashSet<_> = OWN_NAMES.iter().collect();
        assert_eq!(distinct.len(), OWN_NAMES.len());
    }

    #[test]
    fn time_round_trips_through_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let text = format_time(t);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time(&text), Some(t));
    }

    #[test]
    fn times_outside_the_four_digit_years_are_clamped() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(format_time(far), "9999-12-31T23:59:59.999Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_time(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations_too_long_for_a_duration_are_refused_not_a_panic() {
        assert_eq!(parse_duration("18446744073709551615s 1000000000ns"), None);
        assert_eq!(parse_duration("99999999999999999999999y"), None);
        assert_eq!(parse_duration("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 5m "), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
