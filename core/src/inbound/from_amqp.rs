//! An AMQP delivery as plain values ([`AmqpDelivery`]), and its message:
//! headers, the id (the producer's, else a digest) and the attempt.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::time_from_secs;
use crate::headers::{AmqpValue, HeaderValue};
use crate::message::IdSource;
use crate::message::{Headers, Message, Meta};
use crate::{attempt, wire};

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
    /// The queue it was consumed from (the message's
    /// [`Meta::source`](crate::message::Meta::source)).
    pub queue: Arc<str>,
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
            headers.append_received(name.as_str(), amqp_header_value(value.clone()));
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
