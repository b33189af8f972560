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
//!   ([`Meta::origin`]: the RabbitMQ queue, or for a Kafka retry topic the
//!   source topic from the adapter's own table), never to a queue or topic a
//!   header names. `x-backstop-original-source` and `x-backstop-group` are
//!   rewritten on every hop and are informational only.
//! - Counting: `x-backstop-attempt` is believed only as far as the last
//!   attempt ([`attempt::admit`]): a forged count can shorten a message's
//!   retries to its last attempt but never skip its run. A count confirmed by
//!   the idempotency store, or carried on a copy consumed from backstop's own
//!   Kafka retry topic, is believed in full.
//!
//! # Identity of messages without an id
//!
//! A Kafka record without an `x-backstop-message-id` is identified by its
//! position, `<topic>/<partition>/<offset>` ([`IdSource::Position`]). An
//! AMQP message with neither a `message_id` property nor that header is
//! identified by [`amqp_digest_id`], a SHA-256 digest of its body, its
//! properties and its headers ([`IdSource::Digest`]): every redelivery of
//! it gets the same id, so attempt counting, idempotency by message id and
//! the dead-lettered mark work for it. Two messages that are identical in
//! body, properties and headers get the same id too, and with an
//! idempotency key from the message id the second is acked as a duplicate;
//! such merges are counted in `backstop_digest_id_merges_total` (see
//! [`metrics`](crate::metrics)). Producers that may publish identical
//! messages on purpose should set a message id.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::headers::{AmqpValue, HeaderValue};
use crate::message::IdSource;
use crate::{Headers, Message, Meta, attempt, wire};

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

/// The AMQP basic properties of a delivery, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmqpProperties {
    /// `content_type`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `expiration`.
    pub expiration: Option<String>,
    /// `message_id`.
    pub message_id: Option<String>,
    /// `timestamp`, seconds since the epoch as the producer wrote it.
    pub timestamp: Option<u64>,
    /// `type`.
    pub kind: Option<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `cluster_id`.
    pub cluster_id: Option<String>,
}

/// An AMQP delivery (or `basic.get` answer), as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmqpDelivery {
    /// The queue it was consumed from.
    pub queue: String,
    /// The delivery tag (`None` for a message read by other means).
    pub delivery_tag: Option<u64>,
    /// The broker's redelivered flag.
    pub redelivered: bool,
    /// The basic properties.
    pub properties: AmqpProperties,
    /// The header table, in order, with its typed values.
    pub headers: Vec<(String, AmqpValue)>,
    /// The body.
    pub body: Bytes,
}

/// Headers the broker adds or changes between deliveries of one message
/// (quorum queues count redeliveries in `x-delivery-count`; dead-lettering
/// writes `x-death` and the `x-first-death-*` / `x-last-death-*` names):
/// not part of [`amqp_digest_id`].
pub fn is_broker_header(name: &str) -> bool {
    name == "x-delivery-count" || is_dead_letter_record(name)
}

/// The broker's record of its own dead-lettering (`x-death`,
/// `x-first-death-*`, `x-last-death-*`): about an earlier hop, rewritten by
/// the broker whenever it dead-letters the message, so not part of the
/// message's headers (a copy backstop publishes is a new message).
pub fn is_dead_letter_record(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// The header value an AMQP field value becomes: a UTF-8 long string as
/// [`HeaderValue::Text`] (written back as a long string), any other value
/// as it is ([`HeaderValue::Amqp`]).
pub fn amqp_header_value(value: AmqpValue) -> HeaderValue {
    match value {
        AmqpValue::LongString(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => HeaderValue::Text(text),
            Err(_) => HeaderValue::Amqp(AmqpValue::LongString(bytes)),
        },
        other => HeaderValue::Amqp(other),
    }
}

/// The id of an AMQP message without a `message_id` property or an
/// `x-backstop-message-id` header: 32 hex digits of the SHA-256 of its
/// body, properties and the headers its producer wrote (each
/// length-prefixed, in table order; [`is_broker_header`]s left out). The
/// same for every redelivery of the message: the delivery tag, the queue,
/// the redelivered flag and the broker's headers are not part of it.
pub fn amqp_digest_id(
    properties: &AmqpProperties,
    headers: &[(String, AmqpValue)],
    body: &[u8],
) -> String {
    let mut hash = Sha256::new();
    let mut field = |tag: &[u8], bytes: &[u8]| {
        hash.update(tag);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(b"backstop-amqp-id-v1", b"");
    field(b"body", body);
    let p = properties;
    let text = [
        (&b"content-type"[..], &p.content_type),
        (b"content-encoding", &p.content_encoding),
        (b"correlation-id", &p.correlation_id),
        (b"reply-to", &p.reply_to),
        (b"expiration", &p.expiration),
        (b"type", &p.kind),
        (b"user-id", &p.user_id),
        (b"app-id", &p.app_id),
        (b"cluster-id", &p.cluster_id),
    ];
    for (tag, value) in text {
        if let Some(value) = value {
            field(tag, value.as_bytes());
        }
    }
    if let Some(mode) = p.delivery_mode {
        field(b"delivery-mode", &[mode]);
    }
    if let Some(priority) = p.priority {
        field(b"priority", &[priority]);
    }
    if let Some(ts) = p.timestamp {
        field(b"timestamp", &ts.to_be_bytes());
    }
    for (name, value) in headers.iter().filter(|(n, _)| !is_broker_header(n)) {
        field(b"header", name.as_bytes());
        match value {
            AmqpValue::LongString(bytes) => field(b"text", bytes),
            AmqpValue::ShortString(text) => field(b"text", text.as_bytes()),
            AmqpValue::Array(_)
            | AmqpValue::Table(_)
            | AmqpValue::ByteArray(_)
            | AmqpValue::Void => field(b"opaque", value.to_string().as_bytes()),
            other => field(b"text", other.to_string().as_bytes()),
        }
    }
    hex::encode(&hash.finalize()[..16])
}

/// The message of an AMQP delivery.
///
/// Headers: every header of the table in order with its typed value
/// ([`amqp_header_value`]), except the broker's dead-lettering records
/// ([`is_dead_letter_record`]). Message id: the `message_id` property,
/// else the `x-backstop-message-id` header, else [`amqp_digest_id`].
/// Attempt: `x-backstop-attempt` (believed only as far as the last attempt,
/// see [`attempt::admit`]). Timestamp: the property, `None` when out of range.
pub fn amqp(delivery: AmqpDelivery) -> Message {
    let AmqpDelivery {
        queue,
        delivery_tag,
        redelivered,
        properties,
        headers: fields,
        body,
    } = delivery;
    let mut headers = Headers::new();
    for (name, value) in &fields {
        if !is_dead_letter_record(name) {
            headers.append(name.clone(), amqp_header_value(value.clone()));
        }
    }
    let producer_id = properties
        .message_id
        .clone()
        .filter(|id| !id.is_empty())
        .or_else(|| {
            headers
                .get(wire::MESSAGE_ID)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
        });
    let (message_id, id_source) = match producer_id {
        Some(id) => (id, IdSource::Producer),
        None => (
            amqp_digest_id(&properties, &fields, &body),
            IdSource::Digest,
        ),
    };
    let meta = Meta {
        source: queue,
        delivery_tag,
        redelivered,
        attempt: attempt::from_headers(&headers),
        message_id,
        timestamp: properties.timestamp.and_then(time_from_secs),
        id_source,
        amqp: Some(properties),
        ..Meta::default()
    };
    Message {
        payload: body,
        headers,
        key: None,
        meta,
    }
}

/// A Kafka record, as plain values borrowed from the client's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaRecord<'a> {
    /// The topic it was consumed from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in milliseconds since the epoch, if it has one.
    pub timestamp_millis: Option<i64>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value (`None` for a tombstone).
    pub payload: Option<&'a [u8]>,
    /// Its headers, in order; a `None` value is a null header.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// The source topic when `topic` is one of backstop's retry topics that
    /// the consumer subscribed to (from the adapter's own table).
    pub retry_of: Option<&'a str>,
}

/// The message id of a Kafka record without an `x-backstop-message-id` header.
pub fn position_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// The message of a Kafka record.
///
/// Headers: every header in order, byte for byte ([`HeaderValue::Bytes`],
/// a null value as [`HeaderValue::Null`], a repeated name kept each time).
/// Message id: the
/// `x-backstop-message-id` header, else [`position_id`]. Timestamp: `None`
/// when negative or out of range.
pub fn kafka(record: &KafkaRecord<'_>) -> Message {
    kafka_with_headers(record, record.headers.len(), record.headers.iter().copied())
}

/// [`kafka`] with the headers from `headers` (in order; `capacity` of
/// them reserved) in place of `record.headers`: an adapter reading them
/// from its client's record needs no vector of its own.
pub fn kafka_with_headers<'a>(
    record: &KafkaRecord<'_>,
    capacity: usize,
    headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Message {
    let mut headers_out = Headers::with_capacity(capacity);
    for (name, value) in headers {
        let value = match value {
            Some(bytes) => HeaderValue::Bytes(Bytes::copy_from_slice(bytes)),
            None => HeaderValue::Null,
        };
        headers_out.append(name, value);
    }
    let headers = headers_out;
    let (message_id, id_source) = match headers.get(wire::MESSAGE_ID).filter(|id| !id.is_empty()) {
        Some(id) => (id.to_owned(), IdSource::Producer),
        None => (
            position_id(record.topic, record.partition, record.offset),
            IdSource::Position,
        ),
    };
    Message {
        payload: record
            .payload
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        key: record.key.map(Bytes::copy_from_slice),
        meta: Meta {
            source: record.topic.to_owned(),
            partition: Some(record.partition),
            offset: Some(record.offset),
            attempt: attempt::from_headers(&headers),
            message_id,
            timestamp: record.timestamp_millis.and_then(time_from_millis),
            retry_of: record.retry_of.map(str::to_owned),
            id_source,
            ..Meta::default()
        },
        headers,
    }
}

/// Runs an adapter's conversion; if it panics, logs the panic and returns
/// `fallback` with [`Meta::conversion_error`] set, so the message is
/// dead-lettered as `decode` instead of the panic stopping the runner.
///
/// `fallback` must build its message from values that cannot fail (the
/// body, the queue or topic, the delivery tag or offset).
pub fn guarded(convert: impl FnOnce() -> Message, fallback: impl FnOnce() -> Message) -> Message {
    match std::panic::catch_unwind(AssertUnwindSafe(convert)) {
        Ok(message) => message,
        Err(payload) => {
            let reason = crate::panic::panic_text(&*payload);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_timestamps_are_none_not_a_panic() {
        assert_eq!(time_from_secs(u64::MAX), None);
        assert_eq!(time_from_secs(1 << 63), None);
        assert_eq!(time_from_secs((-1i64) as u64), None);
        assert_eq!(
            time_from_secs(1_700_000_000),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(time_from_millis(-1), None);
        assert_eq!(time_from_millis(i64::MAX), None);
        assert_eq!(time_from_millis(0), Some(SystemTime::UNIX_EPOCH));
    }

    fn id_less(body: &'static str) -> AmqpDelivery {
        AmqpDelivery {
            queue: "q".into(),
            delivery_tag: Some(1),
            properties: AmqpProperties {
                content_type: Some("application/json".into()),
                timestamp: Some(u64::MAX),
                ..AmqpProperties::default()
            },
            headers: vec![
                ("app".into(), AmqpValue::LongString("v".into())),
                ("x-death".into(), AmqpValue::Array(vec![])),
            ],
            body: Bytes::from_static(body.as_bytes()),
            ..AmqpDelivery::default()
        }
    }

    #[test]
    fn an_id_less_amqp_message_keeps_one_id_across_redeliveries() {
        let first = amqp(id_less("{}"));
        let mut again = id_less("{}");
        again.delivery_tag = Some(9);
        again.redelivered = true;
        let again = amqp(again);
        assert_eq!(first.meta.message_id, again.meta.message_id);
        assert_eq!(first.meta.id_source, IdSource::Digest);
        assert_eq!(first.meta.message_id.len(), 32);
        assert_eq!(first.meta.timestamp, None, "2^64-1 is out of range");
        assert_ne!(
            first.meta.message_id,
            amqp(id_less("{ }")).meta.message_id,
            "another body is another message"
        );
        let mut other_header = id_less("{}");
        other_header.headers[0].1 = AmqpValue::LongString("w".into());
        assert_ne!(first.meta.message_id, amqp(other_header).meta.message_id);
        // The broker's own headers change between deliveries: not part of the id.
        let mut counted = id_less("{}");
        counted.headers[1].1 = AmqpValue::Array(vec![AmqpValue::Void]);
        counted
            .headers
            .push(("x-delivery-count".into(), AmqpValue::LongLongInt(1)));
        assert_eq!(first.meta.message_id, amqp(counted).meta.message_id);
        assert!(!first.headers.contains_key("x-death"));
    }

    #[test]
    fn producer_ids_win_over_the_digest() {
        let mut d = id_less("{}");
        d.headers
            .push((wire::MESSAGE_ID.into(), AmqpValue::LongString("h".into())));
        assert_eq!(amqp(d.clone()).meta.message_id, "h");
        d.properties.message_id = Some("p".into());
        let m = amqp(d);
        assert_eq!(m.meta.message_id, "p");
        assert_eq!(m.meta.id_source, IdSource::Producer);
    }

    #[test]
    fn kafka_records_convert_without_panics() {
        let record = KafkaRecord {
            topic: "orders.g.retry.5s",
            partition: 3,
            offset: 7,
            timestamp_millis: Some(-1),
            key: Some(b"k"),
            payload: Some(&[0xff, 0x00]),
            headers: vec![
                ("bin", Some(&[0xff, 0xfe])),
                ("null", None),
                ("bin", Some(b"2")),
            ],
            retry_of: Some("orders"),
        };
        let m = kafka(&record);
        assert_eq!(m.meta.timestamp, None);
        assert_eq!(m.meta.message_id, "orders.g.retry.5s/3/7");
        assert_eq!(m.meta.id_source, IdSource::Position);
        assert_eq!(m.meta.origin(), "orders");
        assert_eq!(m.headers.get_value("null"), Some(&HeaderValue::Null));
        assert_eq!(
            m.header("bin"),
            Some("2"),
            "the last value of a repeated name"
        );
        let bin: Vec<_> = m.headers.get_all("bin").collect();
        assert_eq!(
            bin,
            [
                &HeaderValue::Bytes(Bytes::from_static(&[0xff, 0xfe])),
                &HeaderValue::Bytes(Bytes::from_static(b"2"))
            ],
            "every value, byte for byte, in order"
        );
    }

    #[test]
    fn a_panicking_conversion_becomes_a_conversion_error() {
        let m = guarded(
            || panic!("bad property"),
            || {
                let mut m = Message::new("raw");
                m.meta.source = "q".into();
                m
            },
        );
        assert_eq!(m.payload, "raw");
        assert!(
            m.meta
                .conversion_error
                .as_deref()
                .is_some_and(|e| e.contains("bad property"))
        );
    }
}
