//! The copies of a message that backstop republishes: delayed-retry copies and
//! dead letters. The header rules of `ARCHITECTURE.md` live here, once.
//!
//! With the feature `otel`, retry copies and dead letters carry the trace
//! context of the span they are made in (the message's consumer span) in
//! place of the one they arrived with (see the `otel` module).

use std::time::SystemTime;

use crate::error::{ErrorKind, Failure};
use crate::message::{Headers, Message, Meta};
use crate::wire;

/// Writes the origin headers on every hop: `x-backstop-original-source` is
/// the message's [`Meta::origin`] (where it was consumed, never a header's
/// word), and the message id. The original partition and offset are the
/// message's own when it was consumed from its source; a copy consumed from
/// a retry topic keeps those of the first consumption. These headers are
/// informational: nothing routes by them (the Kafka adapter's ordered
/// retries read a retry copy's position, which only backstop writes, to
/// report its end to its main partition).
pub fn stamp_origin(headers: &mut Headers, meta: &Meta) {
    let origin = meta.origin();
    if origin.is_empty() {
        headers.remove(wire::ORIGINAL_SOURCE);
    } else {
        headers.insert(wire::ORIGINAL_SOURCE.to_owned(), origin.to_owned());
    }
    let position = [
        (wire::ORIGINAL_PARTITION, meta.partition.map(i64::from)),
        (wire::ORIGINAL_OFFSET, meta.offset),
    ];
    for (name, value) in position {
        match value {
            Some(_) if meta.retry_of.is_some() && headers.contains_key(name) => {}
            Some(value) => {
                headers.insert(name.to_owned(), value.to_string());
            }
            None => {
                headers.remove(name);
            }
        }
    }
    match meta.timestamp {
        Some(_) if meta.retry_of.is_some() && headers.contains_key(wire::ORIGINAL_TIMESTAMP) => {}
        Some(at) => {
            headers.insert(wire::ORIGINAL_TIMESTAMP.to_owned(), wire::format_time(at));
        }
        None => {
            headers.remove(wire::ORIGINAL_TIMESTAMP);
        }
    }
    if !meta.message_id.is_empty() {
        headers.insert(wire::MESSAGE_ID.to_owned(), meta.message_id.clone());
    }
}

/// The copy republished for a broker-delayed retry: attempt incremented, due
/// time and first failure stamped, origin kept.
pub fn retry(
    message: &Message,
    next_attempt: u32,
    due: SystemTime,
    first_failure: SystemTime,
) -> Message {
    let mut copy = message.clone();
    stamp_origin(&mut copy.headers, &message.meta);
    copy.headers
        .insert(wire::ATTEMPT.to_owned(), next_attempt.to_string());
    // Rounded up to the next millisecond: the wire keeps milliseconds, and a
    // copy must never look due before it is.
    let due = due + std::time::Duration::from_nanos(999_999);
    copy.headers
        .insert(wire::DUE.to_owned(), wire::format_time(due));
    keep_first_failure(&mut copy.headers, first_failure);
    copy.meta.attempt = next_attempt;
    #[cfg(feature = "otel")]
    crate::otel::inject_current(&mut copy.headers);
    copy
}

/// The copy republished to postpone a message that failed no attempt (a
/// dependency outage, a key busy elsewhere, a delivery about to outlive the
/// broker's consumer timeout): the same attempt count, the due time
/// stamped, origin kept, no failure recorded.
pub fn postponed(message: &Message, due: SystemTime) -> Message {
    let mut copy = message.clone();
    stamp_origin(&mut copy.headers, &message.meta);
    let attempt = message.meta.attempt.max(crate::attempt::FIRST);
    copy.headers
        .insert(wire::ATTEMPT.to_owned(), attempt.to_string());
    let due = due + std::time::Duration::from_nanos(999_999);
    copy.headers
        .insert(wire::DUE.to_owned(), wire::format_time(due));
    copy.meta.attempt = attempt;
    copy
}

/// Keeps a first failure written by an earlier copy if it is a wire time;
/// writes `first` otherwise (also over a value that is not a time).
fn keep_first_failure(headers: &mut Headers, first: SystemTime) {
    let earlier = headers
        .get(wire::FIRST_FAILURE)
        .is_some_and(|t| wire::parse_time(t).is_some());
    if !earlier {
        headers.insert(wire::FIRST_FAILURE.to_owned(), wire::format_time(first));
    }
}

/// The dead letter for `message`: the original payload, key and headers,
/// plus the origin, the failure's kind and text (cut to 1 KiB), its times
/// and the attempt count.
pub fn dead_letter(message: &Message, failure: &Failure) -> Message {
    let mut letter = message.clone();
    let h = &mut letter.headers;
    stamp_origin(h, &message.meta);
    h.insert(wire::ATTEMPT.to_owned(), failure.attempts.to_string());
    h.insert(
        wire::ERROR_KIND.to_owned(),
        failure.kind.as_str().to_owned(),
    );
    h.insert(
        wire::ERROR.to_owned(),
        wire::truncate(&failure.message, wire::MAX_ERROR_LEN).to_owned(),
    );
    keep_first_failure(h, failure.first_failure);
    h.insert(
        wire::LAST_FAILURE.to_owned(),
        wire::format_time(failure.last_failure),
    );
    h.remove(wire::DUE);
    #[cfg(feature = "otel")]
    crate::otel::inject_current(h);
    letter
}

/// The error kind a dead letter carries, if it is one.
pub fn dead_letter_kind(message: &Message) -> Option<ErrorKind> {
    message.header(wire::ERROR_KIND).and_then(ErrorKind::parse)
}

/// The copy of `letter` a redrive of a DLQ publishes (`backstop dlq
/// redrive`): the same payload, key, message
/// id, AMQP properties ([`Meta::amqp`](Meta::amqp)) and headers
/// of every type; `x-backstop-replayed` incremented; `x-backstop-attempt`
/// reset to 1 (a redrive starts a new count); the failure headers of the last
/// run (kind, error, failure times, due) removed, so a new failure is recorded
/// afresh. With the feature `otel`, the copy carries the trace context of a
/// `redrive` span that is a child of the letter's (see `otel`),
/// so the redriven message stays in the trace it failed in.
pub fn redrive(letter: &Message) -> Message {
    let mut copy = Message {
        payload: letter.payload.clone(),
        headers: letter.headers.clone(),
        key: letter.key.clone(),
        meta: Meta {
            attempt: 1,
            message_id: letter.meta.message_id.clone(),
            amqp: letter.meta.amqp.clone(),
            ..Meta::default()
        },
    };
    let h = &mut copy.headers;
    h.insert(
        wire::REPLAYED.to_owned(),
        (letter.replayed() + 1).to_string(),
    );
    h.insert(wire::ATTEMPT.to_owned(), "1".to_owned());
    for name in [
        wire::ERROR_KIND,
        wire::ERROR,
        wire::FIRST_FAILURE,
        wire::LAST_FAILURE,
        wire::DUE,
    ] {
        h.remove(name);
    }
    #[cfg(feature = "otel")]
    {
        let span = tracing::info_span!(
            "backstop.redrive",
            "otel.name" = "redrive",
            "otel.kind" = "producer",
            "messaging.operation.type" = "send",
            "messaging.message.id" = copy.meta.message_id.as_str(),
            replayed = letter.replayed() + 1,
        );
        crate::otel::adopt(&span, &letter.headers);
        crate::otel::inject_span(&span, &mut copy.headers);
    }
    copy
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
