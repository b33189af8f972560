//! Between AMQP and backstop: field tables to text headers and back, a lapin
//! delivery to a [`Message`], a [`Message`] to AMQP properties.
//!
//! backstop headers are UTF-8 text on every broker. Incoming AMQP header
//! values are converted to text: strings as they are (invalid UTF-8 is
//! replaced), integers and floats in decimal, booleans as `true`/`false`,
//! timestamps as seconds since the epoch, decimals as `value/10^scale`.
//! Nested tables, arrays, byte arrays and void values (such as RabbitMQ's
//! `x-death`) have no text form and are left out. Outgoing headers are all
//! written as long strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::{Headers, Message, Meta, attempt, message::new_message_id, wire};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::EncodeError;

/// AMQP persistent delivery mode.
pub(crate) const PERSISTENT: u8 = 2;

/// The text form of an AMQP field value, if it has one.
pub fn value_to_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => {
            let scale = 10f64.powi(i32::from(d.scale));
            (f64::from(d.value) / scale).to_string()
        }
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => {
            return None;
        }
    })
}

/// The text headers of an AMQP field table (values without a text form are left out).
pub fn headers_from_table(table: Option<&FieldTable>) -> Headers {
    let mut headers = Headers::new();
    if let Some(table) = table {
        for (name, value) in table.inner() {
            if let Some(text) = value_to_text(value) {
                headers.insert(name.as_str().to_owned(), text);
            }
        }
    }
    headers
}

/// An AMQP field table of long strings from text headers.
pub(crate) fn table_from_headers(headers: &Headers) -> Result<FieldTable, EncodeError> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let key = ShortString::try_new(name.as_str())
            .map_err(|_| EncodeError::HeaderNameTooLong(name.clone()))?;
        table.insert(
            key,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    Ok(table)
}

/// The AMQP properties a published message carries: persistent, its message
/// id (property and `x-backstop-message-id` header), its headers, a timestamp.
pub(crate) fn properties_for(message: &Message) -> Result<BasicProperties, EncodeError> {
    let id = message.id_for_publish();
    let mut headers = message.headers.clone();
    headers.insert(wire::MESSAGE_ID.to_owned(), id.clone());
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table_from_headers(&headers)?)
        .with_timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        );
    // An id too long for the property still travels in the header.
    if let Ok(id) = ShortString::try_new(id) {
        properties = properties.with_message_id(id);
    }
    Ok(properties)
}

/// The message of a delivery consumed from `queue`.
///
/// The message id is the AMQP `message_id` property, else the
/// `x-backstop-message-id` header, else a new one (assigned on first sight);
/// the attempt comes from `x-backstop-attempt`.
pub(crate) fn message_from_delivery(
    queue: &str,
    delivery_tag: u64,
    redelivered: bool,
    properties: &BasicProperties,
    data: Vec<u8>,
) -> Message {
    let headers = headers_from_table(properties.headers().as_ref());
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .or_else(|| {
            headers
                .get(wire::MESSAGE_ID)
                .filter(|id| !id.is_empty())
                .cloned()
        })
        .unwrap_or_else(new_message_id);
    let meta = Meta {
        source: queue.to_owned(),
        delivery_tag: Some(delivery_tag),
        redelivered,
        attempt: attempt::from_headers(&headers),
        message_id,
        timestamp: properties
            .timestamp()
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs)),
        ..Meta::default()
    };
    Message {
        payload: Bytes::from(data),
        headers,
        key: None,
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{DecimalValue, FieldArray};

    #[test]
    fn field_values_become_text() {
        let mut table = FieldTable::default();
        table.insert("long".into(), AMQPValue::LongString("text".into()));
        table.insert("short".into(), AMQPValue::ShortString("s".into()));
        table.insert("int".into(), AMQPValue::LongInt(-5));
        table.insert("big".into(), AMQPValue::LongLongInt(1 << 40));
        table.insert("u8".into(), AMQPValue::ShortShortUInt(7));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        table.insert(
            "dec".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 150,
            }),
        );
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert(
            "bad-utf8".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, b'a'])),
        );
        let h = headers_from_table(Some(&table));
        assert_eq!(h.get("long").map(String::as_str), Some("text"));
        assert_eq!(h.get("short").map(String::as_str), Some("s"));
        assert_eq!(h.get("int").map(String::as_str), Some("-5"));
        assert_eq!(h.get("big").map(String::as_str), Some("1099511627776"));
        assert_eq!(h.get("u8").map(String::as_str), Some("7"));
        assert_eq!(h.get("flag").map(String::as_str), Some("true"));
        assert_eq!(h.get("dec").map(String::as_str), Some("1.5"));
        assert_eq!(h.get("bad-utf8").map(String::as_str), Some("\u{fffd}a"));
        assert!(!h.contains_key("x-death"));
    }

    #[test]
    fn message_id_comes_from_the_property_then_the_header() {
        let with_header = BasicProperties::default().with_headers(
            table_from_headers(&Headers::from([(
                wire::MESSAGE_ID.to_owned(),
                "from-header".to_owned(),
            )]))
            .unwrap(),
        );
        let m = message_from_delivery("q", 7, true, &with_header, b"x".to_vec());
        assert_eq!(m.meta.message_id, "from-header");
        assert_eq!(m.meta.delivery_tag, Some(7));
        assert!(m.meta.redelivered);
        assert_eq!(m.meta.source, "q");
        assert_eq!(m.meta.attempt, 1);

        let with_property = with_header.with_message_id("from-property".into());
        let m = message_from_delivery("q", 1, false, &with_property, Vec::new());
        assert_eq!(m.meta.message_id, "from-property");

        let none = message_from_delivery("q", 1, false, &BasicProperties::default(), Vec::new());
        assert_eq!(none.meta.message_id.len(), 32, "a fresh id is assigned");
    }

    #[test]
    fn attempt_comes_from_the_header() {
        let props = BasicProperties::default().with_headers(
            table_from_headers(&Headers::from([(wire::ATTEMPT.to_owned(), "3".to_owned())]))
                .unwrap(),
        );
        assert_eq!(
            message_from_delivery("q", 1, false, &props, Vec::new())
                .meta
                .attempt,
            3
        );
    }

    #[test]
    fn published_properties_are_persistent_with_id_and_headers() {
        let m = Message::new("x")
            .with_message_id("m-1")
            .with_header("app", "v");
        let p = properties_for(&m).unwrap();
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some("m-1")
        );
        let h = headers_from_table(p.headers().as_ref());
        assert_eq!(h.get(wire::MESSAGE_ID).map(String::as_str), Some("m-1"));
        assert_eq!(h.get("app").map(String::as_str), Some("v"));
        assert!(matches!(
            p.headers().as_ref().and_then(|t| t.inner().get("app")),
            Some(AMQPValue::LongString(_))
        ));
    }

    #[test]
    fn overlong_header_names_are_refused() {
        let m = Message::new("x").with_header("h".repeat(300), "v");
        assert!(matches!(
            properties_for(&m),
            Err(EncodeError::HeaderNameTooLong(_))
        ));
        let long_id = Message::new("x").with_message_id("i".repeat(300));
        let p = properties_for(&long_id).unwrap();
        assert!(p.message_id().is_none());
        assert_eq!(
            headers_from_table(p.headers().as_ref())
                .get(wire::MESSAGE_ID)
                .map(String::len),
            Some(300)
        );
    }
}
