//! Kafka records ⟷ backstop messages: headers, key, ids and metadata.

use std::time::{Duration, SystemTime};

use backstop::{Headers, Message, Meta, attempt, wire};
use bytes::Bytes;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// The message id of a record without an `x-backstop-message-id` header.
pub fn assigned_message_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// A received record as a [`Message`]: payload, key and headers copied;
/// meta from the topic, partition, offset, timestamp and backstop headers.
pub fn to_message<M: rdkafka::Message>(record: &M) -> Message {
    let mut headers = Headers::new();
    if let Some(h) = record.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            headers.insert(header.key.to_owned(), value.into_owned());
        }
    }
    let topic = record.topic();
    let (partition, offset) = (record.partition(), record.offset());
    let message_id = headers
        .get(wire::MESSAGE_ID)
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| assigned_message_id(topic, partition, offset));
    let timestamp = record
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    Message {
        payload: record
            .payload()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        key: record.key().map(Bytes::copy_from_slice),
        meta: Meta {
            source: topic.to_owned(),
            partition: Some(partition),
            offset: Some(offset),
            attempt: attempt::from_headers(&headers),
            message_id,
            timestamp,
            ..Meta::default()
        },
        headers,
    }
}

/// The due time a delayed-retry copy carries, if any (`copy::retry` rounds
/// it up to the millisecond, so it is never before the delay asked for).
pub(crate) fn due(message: &Message) -> Option<SystemTime> {
    message.header(wire::DUE).and_then(wire::parse_time)
}

/// Record headers for publishing `message`: its headers plus its message id.
pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    let headers = message.headers_for_publish();
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in &headers {
        owned = owned.insert(Header {
            key: key.as_str(),
            value: Some(value.as_bytes()),
        });
    }
    owned
}
