//! The broker → [`Message`] conversion of the adapters, as pure functions
//! over plain data.
//!
//! An adapter copies what its client library delivered into an
//! [`AmqpDelivery`] or a [`KafkaRecord`] (plain values, no client types) and
//! calls [`amqp`] or [`kafka`]. Nothing here panics on any value a broker or
//! a producer can send (`core/fuzz` checks it without linking a broker
//! client), and [`guarded`] turns a panic in the adapter's own part of the
//! conversion into a message that is dead-lettered as `decode`: one delivery
//! can never stop a runner.
//!
//! # Trust
//!
//! Producers on a source are trusted for message ids and keys, never for
//! routing or counting:
//!
//! - Routing: dead letters and retry copies go where the message was consumed
//!   ([`Meta::origin`](crate::message::Meta::origin): the RabbitMQ queue, or for a Kafka retry topic the
//!   source topic from the adapter's own table), never to a queue or topic a
//!   header names. `x-backstop-original-source` and `x-backstop-group` are
//!   rewritten on every hop and are informational only.
//! - Counting: `x-backstop-attempt` is believed only as far as the last
//!   attempt ([`attempt::admit`](crate::attempt::admit)): a forged count can shorten a message's
//!   retries to its last attempt but never skip its run. A count confirmed by
//!   the idempotency store, or carried on a copy consumed from backstop's own
//!   Kafka retry topic, is believed in full.
//!
//! # Identity of messages without an id
//!
//! A Kafka record without an `x-backstop-message-id` is identified by its
//! position, `<topic>/<partition>/<offset>` ([`IdSource::Position`](crate::message::IdSource::Position)). An
//! AMQP message with neither a `message_id` property nor that header is
//! identified by [`amqp_digest_id`], a SHA-256 digest of its body, its
//! properties and its headers ([`IdSource::Digest`](crate::message::IdSource::Digest)): every redelivery of
//! it gets the same id, so attempt counting, idempotency by message id and
//! the dead-lettered mark work for it. Two messages that are identical in
//! body, properties and headers get the same id too, and with an
//! idempotency key from the message id the second is acked as a duplicate;
//! such merges are counted in `backstop_digest_id_merges_total` (see
//! [`metrics`](crate::metrics)). Producers that may publish identical
//! messages on purpose should set a message id.

mod from_amqp;
mod from_kafka;
#[cfg(test)]
mod tests;

pub use self::from_amqp::{
    AmqpDelivery, AmqpProperties, amqp, amqp_digest_id, amqp_header_value, is_broker_header,
    is_dead_letter_record,
};
pub use self::from_kafka::{KafkaRecord, kafka, kafka_with_headers, position_id};

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use crate::message::Message;
use crate::wire;

/// The latest time a broker timestamp may name: the wire format's maximum.
fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(wire::MAX_TIME_MILLIS)
}

/// An AMQP timestamp (seconds since the epoch, unsigned) as a time; `None`
/// when it is after 9999-12-31 (as a negative date written by a Java or .NET
/// producer reads).
pub fn time_from_secs(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .filter(|t| *t <= latest())
}

/// A Kafka timestamp (milliseconds since the epoch) as a time; `None` when
/// negative (Kafka's `-1` means none) or after 9999-12-31.
pub fn time_from_millis(millis: i64) -> Option<SystemTime> {
    let millis = u64::try_from(millis).ok()?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .filter(|t| *t <= latest())
}

/// Runs an adapter's conversion; if it panics, logs the panic and returns
/// `fallback` with [`Meta::conversion_error`](crate::message::Meta::conversion_error) set, so the message is
/// dead-lettered as `decode` instead of the panic stopping the runner.
///
/// `fallback` must build its message from values that cannot fail (the
/// body, the queue or topic, the delivery tag or offset).
pub fn guarded(convert: impl FnOnce() -> Message, fallback: impl FnOnce() -> Message) -> Message {
    match std::panic::catch_unwind(AssertUnwindSafe(convert)) {
        Ok(message) => message,
        Err(payload) => {
            let reason = crate::catch_panic::panic_text(&*payload);
            let mut message = fallback();
            tracing::error!(
                source = %message.meta.source,
                message_id = %message.meta.message_id,
                %reason,
                "converting a delivery panicked; it is dead-lettered as decode"
            );
            message.meta.conversion_error =
                Some(format!("the delivery could not be converted: {reason}"));
            message
        }
    }
}
