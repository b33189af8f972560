//! A Kafka record as plain values ([`KafkaRecord`]), and its message:
//! headers byte for byte, the id (the producer's, else the position).

use std::sync::Arc;

use bytes::Bytes;

use super::time_from_millis;
use crate::headers::HeaderValue;
use crate::message::IdSource;
use crate::message::{Headers, Message, Meta};
use crate::{attempt, wire};

/// A Kafka record, as plain values (borrowed from the client's record,
/// but for the topic's name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaRecord<'a> {
    /// The topic it was consumed from (the message's
    /// [`Meta::source`](crate::message::Meta::source); a consumer that
    /// keeps one copy per topic passes that copy).
    pub topic: Arc<str>,
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
        headers_out.append_received(name, value);
    }
    let headers = headers_out;
    let (message_id, id_source) = match headers.get(wire::MESSAGE_ID).filter(|id| !id.is_empty()) {
        Some(id) => (id.to_owned(), IdSource::Producer),
        None => (
            position_id(&record.topic, record.partition, record.offset),
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
            source: Arc::clone(&record.topic),
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
