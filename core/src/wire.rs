//! The header names backstop writes and reads on every broker.
//!
//! Every value is UTF-8 text, so the same names work on RabbitMQ headers and
//! Kafka record headers alike. See `ARCHITECTURE.md` for the rules each name
//! follows (written once, incremented, carried unchanged).

use std::time::{Duration, SystemTime};

/// The message id, carried unchanged on every copy (retry, DLQ, replay).
pub const MESSAGE_ID: &str = "x-backstop-message-id";
/// The 1-based number of the attempt the copy is for; incremented on each republished retry.
pub const ATTEMPT: &str = "x-backstop-attempt";
/// The queue or topic the message was first consumed from; written once.
pub const ORIGINAL_SOURCE: &str = "x-backstop-original-source";
/// The Kafka partition the message was first consumed from; written once.
pub const ORIGINAL_PARTITION: &str = "x-backstop-original-partition";
/// The Kafka offset the message was first consumed at; written once.
pub const ORIGINAL_OFFSET: &str = "x-backstop-original-offset";
/// The Kafka consumer group that dead-lettered or deferred the message; written once.
pub const GROUP: &str = "x-backstop-group";
/// Why the message was dead-lettered (see [`ErrorKind`](crate::ErrorKind)).
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

/// The longest error text written to [`ERROR`], in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// Formats a time as RFC 3339 UTC with millisecond precision.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
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
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_through_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let text = format_time(t);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time(&text), Some(t));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
