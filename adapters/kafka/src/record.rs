//! Kafka records ⟷ backstop messages: headers, key, ids and metadata.

use std::sync::Arc;
use std::time::SystemTime;

use backstop::inbound::{self, KafkaRecord};
use backstop::{Message, wire};
use bytes::Bytes;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// The message id of a record without an `x-backstop-message-id` header.
pub fn assigned_message_id(topic: &str, partition: i32, offset: i64) -> String {
    inbound::position_id(topic, partition, offset)
}

/// A received record as a [`Message`]: payload, key and headers copied;
/// meta from the topic, partition, offset, timestamp and backstop headers
/// ([`inbound::kafka`]).
pub fn to_message<M: rdkafka::Message>(record: &M) -> Message {
    to_message_from(record, record.topic().into(), None)
}

/// [`to_message`] with the record's `topic` as the consumer shares it,
/// for a record of a retry topic of `retry_of` (from the source's own
/// table of the retry topics it subscribed to).
pub(crate) fn to_message_from<M: rdkafka::Message>(
    record: &M,
    topic: Arc<str>,
    retry_of: Option<&str>,
) -> Message {
    let fields = KafkaRecord {
        topic,
        partition: record.partition(),
        offset: record.offset(),
        timestamp_millis: record.timestamp().to_millis(),
        key: record.key(),
        payload: record.payload(),
        headers: Vec::new(),
        retry_of,
    };
    match record.headers() {
        Some(headers) => {
            let n = headers.count();
            let iter = (0..n).filter_map(|i| headers.try_get(i).map(|h| (h.key, h.value)));
            inbound::kafka_with_headers(&fields, n, iter)
        }
        None => inbound::kafka(&fields),
    }
}

/// [`to_message_from`] under [`inbound::guarded`]: a panic while converting
/// gives a message that is dead-lettered as `decode` (body, topic, partition
/// and offset kept) instead of stopping the poll thread.
pub(crate) fn guarded_message<M: rdkafka::Message>(
    record: &M,
    topic: &Arc<str>,
    retry_of: Option<&str>,
) -> Message {
    inbound::guarded(
        || to_message_from(record, Arc::clone(topic), retry_of),
        || {
            let mut message =
                Message::new(Bytes::copy_from_slice(record.payload().unwrap_or_default()))
                    .with_message_id(inbound::position_id(
                        record.topic(),
                        record.partition(),
                        record.offset(),
                    ));
            message.meta.source = Arc::clone(topic);
            message.meta.partition = Some(record.partition());
            message.meta.offset = Some(record.offset());
            message.meta.retry_of = retry_of.map(str::to_owned);
            message.meta.id_source = backstop::message::IdSource::Position;
            message
        },
    )
}

/// The due time a delayed-retry copy carries, if any (`copy::retry` rounds
/// it up to the millisecond, so it is never before the delay asked for).
pub(crate) fn due(message: &Message) -> Option<SystemTime> {
    message.header(wire::DUE).and_then(wire::parse_time)
}

/// Record headers for publishing `message`: its headers plus its message
/// id, in order, byte for byte ([`HeaderValue::to_bytes`]: a null stays
/// null, a repeated name is written each time).
///
/// [`HeaderValue::to_bytes`]: backstop::headers::HeaderValue::to_bytes
pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    let headers = message.headers_for_publish();
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers.iter_values() {
        let bytes = value.to_bytes();
        owned = owned.insert(Header {
            key,
            value: bytes.as_deref(),
        });
    }
    owned
}
