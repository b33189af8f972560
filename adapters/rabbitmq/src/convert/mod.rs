//! Between AMQP and backstop: field tables to typed headers and back, a
//! lapin delivery to a [`Message`], a [`Message`] to AMQP properties.
//!
//! A delivery is first copied into plain values ([`plain_delivery`]), then
//! converted by backstop's pure [`inbound::amqp`] (fuzzed without lapin).
//!
//! Header values keep their AMQP type both ways ([`value_from_amqp`],
//! [`value_to_amqp`]): a UTF-8 long string becomes
//! [`HeaderValue::Text`], any other field value (integers, floats,
//! decimals, booleans, timestamps, short strings, long strings that are not
//! UTF-8, byte arrays, arrays, nested tables, void) stays a
//! [`HeaderValue::Amqp`] and is written back as the same type and bytes.
//! Text is written as a long string, bytes (from Kafka) as a long string,
//! null as void. A table has one value per name: where a name repeats (a
//! Kafka record), the last value is written. The broker's own
//! dead-lettering records (`x-death`, `x-first-death-*`, `x-last-death-*`)
//! are not carried ([`inbound::is_dead_letter_record`]).

use std::time::{SystemTime, UNIX_EPOCH};

use backstop::headers::{AmqpValue, HeaderValue};
use backstop::inbound::{self, AmqpDelivery, AmqpProperties};
use backstop::message::{Headers, IdSource};
use backstop::{Message, wire};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};

use crate::error::EncodeError;

/// AMQP persistent delivery mode.
pub(crate) const PERSISTENT: u8 = 2;

/// A lapin field value as plain data, type and bytes kept.
pub fn value_from_amqp(value: &AMQPValue) -> AmqpValue {
    match value {
        AMQPValue::Boolean(b) => AmqpValue::Boolean(*b),
        AMQPValue::ShortShortInt(n) => AmqpValue::ShortShortInt(*n),
        AMQPValue::ShortShortUInt(n) => AmqpValue::ShortShortUInt(*n),
        AMQPValue::ShortInt(n) => AmqpValue::ShortInt(*n),
        AMQPValue::ShortUInt(n) => AmqpValue::ShortUInt(*n),
        AMQPValue::LongInt(n) => AmqpValue::LongInt(*n),
        AMQPValue::LongUInt(n) => AmqpValue::LongUInt(*n),
        AMQPValue::LongLongInt(n) => AmqpValue::LongLongInt(*n),
        AMQPValue::Float(n) => AmqpValue::Float(n.to_bits()),
        AMQPValue::Double(n) => AmqpValue::Double(n.to_bits()),
        AMQPValue::DecimalValue(d) => AmqpValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => AmqpValue::ShortString(s.as_str().to_owned()),
        AMQPValue::LongString(s) => AmqpValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            AmqpValue::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => AmqpValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => AmqpValue::Table(
            t.inner()
                .iter()
                .map(|(name, v)| (name.as_str().to_owned(), value_from_amqp(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => AmqpValue::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => AmqpValue::Void,
    }
}

/// A plain field value as lapin's, type and bytes kept (a short string,
/// which a field table cannot carry on the wire, is written as a long
/// string of the same bytes).
pub fn value_to_amqp(value: &AmqpValue) -> Result<AMQPValue, EncodeError> {
    Ok(match value {
        AmqpValue::Boolean(b) => AMQPValue::Boolean(*b),
        AmqpValue::ShortShortInt(n) => AMQPValue::ShortShortInt(*n),
        AmqpValue::ShortShortUInt(n) => AMQPValue::ShortShortUInt(*n),
        AmqpValue::ShortInt(n) => AMQPValue::ShortInt(*n),
        AmqpValue::ShortUInt(n) => AMQPValue::ShortUInt(*n),
        AmqpValue::LongInt(n) => AMQPValue::LongInt(*n),
        AmqpValue::LongUInt(n) => AMQPValue::LongUInt(*n),
        AmqpValue::LongLongInt(n) => AMQPValue::LongLongInt(*n),
        AmqpValue::Float(bits) => AMQPValue::Float(f32::from_bits(*bits)),
        AmqpValue::Double(bits) => AMQPValue::Double(f64::from_bits(*bits)),
        AmqpValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        // Field tables have no short-string type on the wire (RabbitMQ reads
        // `s` as a short integer; lapin would write an invalid tag).
        AmqpValue::ShortString(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        AmqpValue::LongString(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        AmqpValue::Array(values) => AMQPValue::FieldArray(FieldArray::from(
            values
                .iter()
                .map(value_to_amqp)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        AmqpValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        AmqpValue::Table(fields) => {
            let mut table = FieldTable::default();
            for (name, v) in fields {
                table.insert(short_name(name)?, value_to_amqp(v)?);
            }
            AMQPValue::FieldTable(table)
        }
        AmqpValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        AmqpValue::Void => AMQPValue::Void,
    })
}

/// A header value as the field value it is written as.
fn header_to_amqp(value: &HeaderValue) -> Result<AMQPValue, EncodeError> {
    Ok(match value {
        HeaderValue::Text(text) => AMQPValue::LongString(LongString::from(text.as_bytes())),
        HeaderValue::Bytes(bytes) => AMQPValue::LongString(LongString::from(bytes.to_vec())),
        HeaderValue::Amqp(value) => value_to_amqp(value)?,
        HeaderValue::Null => AMQPValue::Void,
    })
}

fn short_name(name: &str) -> Result<ShortString, EncodeError> {
    ShortString::try_new(name).map_err(|_| EncodeError::HeaderNameTooLong(name.to_owned()))
}

/// The headers of an AMQP field table, typed as [`inbound::amqp`] reads
/// them (the broker's dead-lettering records left out).
pub fn headers_from_table(table: Option<&FieldTable>) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in table.map(FieldTable::inner).into_iter().flatten() {
        if !inbound::is_dead_letter_record(name.as_str()) {
            headers.append(
                name.as_str(),
                inbound::amqp_header_value(value_from_amqp(value)),
            );
        }
    }
    headers
}

/// The AMQP field table of `headers`, each value of its type.
pub(crate) fn table_from_headers(headers: &Headers) -> Result<FieldTable, EncodeError> {
    let mut table = FieldTable::default();
    for (name, value) in headers.iter_values() {
        table.insert(short_name(name)?, header_to_amqp(value)?);
    }
    Ok(table)
}

/// The AMQP properties a published message carries: persistent, its message
/// id (property and `x-backstop-message-id` header), its headers, and a
/// timestamp. A message consumed from RabbitMQ keeps the properties it
/// arrived with ([`Meta::amqp`](backstop::message::Meta::amqp)): content type and
/// encoding, correlation id, reply-to, type, app id, priority and its own
/// timestamp. Not kept: `expiration` (a per-message TTL would fight the
/// delay queues' and could expire a dead letter), `user_id` (the broker
/// refuses one that is not the publishing connection's user) and the
/// deprecated `cluster_id`.
pub(crate) fn properties_for(message: &Message) -> Result<BasicProperties, EncodeError> {
    let id = message.id_for_publish();
    let mut headers = message.headers.clone();
    headers.insert(wire::MESSAGE_ID, id.clone());
    let original = message.meta.amqp.as_ref();
    let timestamp = original.and_then(|p| p.timestamp).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    });
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table_from_headers(&headers)?)
        .with_timestamp(timestamp);
    // An id too long for the property still travels in the header.
    if let Ok(id) = ShortString::try_new(id) {
        properties = properties.with_message_id(id);
    }
    if let Some(p) = original {
        let short = |s: &Option<String>| s.as_deref().and_then(|s| ShortString::try_new(s).ok());
        if let Some(v) = short(&p.content_type) {
            properties = properties.with_content_type(v);
        }
        if let Some(v) = short(&p.content_encoding) {
            properties = properties.with_content_encoding(v);
        }
        if let Some(v) = short(&p.correlation_id) {
            properties = properties.with_correlation_id(v);
        }
        if let Some(v) = short(&p.reply_to) {
            properties = properties.with_reply_to(v);
        }
        if let Some(v) = short(&p.kind) {
            properties = properties.with_type(v);
        }
        if let Some(v) = short(&p.app_id) {
            properties = properties.with_app_id(v);
        }
        if let Some(v) = p.priority {
            properties = properties.with_priority(v);
        }
    }
    Ok(properties)
}

/// The plain values of a delivery (or a `basic.get` answer) from `queue`,
/// for [`inbound::amqp`].
pub fn plain_delivery(
    queue: &str,
    delivery_tag: Option<u64>,
    redelivered: bool,
    properties: &BasicProperties,
    body: Bytes,
) -> AmqpDelivery {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value_from_amqp(value)))
                .collect()
        })
        .unwrap_or_default();
    AmqpDelivery {
        queue: queue.into(),
        delivery_tag,
        redelivered,
        properties: AmqpProperties {
            content_type: text(properties.content_type()),
            content_encoding: text(properties.content_encoding()),
            delivery_mode: *properties.delivery_mode(),
            priority: *properties.priority(),
            correlation_id: text(properties.correlation_id()),
            reply_to: text(properties.reply_to()),
            expiration: text(properties.expiration()),
            message_id: text(properties.message_id()),
            timestamp: *properties.timestamp(),
            kind: text(properties.kind()),
            user_id: text(properties.user_id()),
            app_id: text(properties.app_id()),
            cluster_id: text(properties.cluster_id()),
        },
        headers,
        body,
    }
}

/// The message of a delivery consumed from `queue` (`delivery_tag` is
/// `None` for a message read by other means, such as the CLI's `basic.get`).
///
/// The message id is the AMQP `message_id` property, else the
/// `x-backstop-message-id` header, else a digest of the body, properties
/// and headers ([`inbound::amqp_digest_id`]), the same on every
/// redelivery; the attempt comes from `x-backstop-attempt`; a timestamp out
/// of range is `None`. A panic while converting gives a message that is
/// dead-lettered as `decode` ([`inbound::guarded`]), never a crash.
pub fn message_from_delivery(
    queue: &str,
    delivery_tag: Option<u64>,
    redelivered: bool,
    properties: &BasicProperties,
    data: Vec<u8>,
) -> Message {
    let body = Bytes::from(data);
    inbound::guarded(
        || {
            inbound::amqp(plain_delivery(
                queue,
                delivery_tag,
                redelivered,
                properties,
                body.clone(),
            ))
        },
        || {
            let id = inbound::amqp_digest_id(&AmqpProperties::default(), &[], &body);
            let mut message = Message::new(body.clone()).with_message_id(id);
            message.meta.source = queue.into();
            message.meta.delivery_tag = delivery_tag;
            message.meta.redelivered = redelivered;
            message.meta.id_source = IdSource::Digest;
            message
        },
    )
}

#[cfg(test)]
mod tests;
