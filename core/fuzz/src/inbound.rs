//! The `inbound` target: arbitrary broker values through backstop's broker
//! → message conversion ([`inbound::amqp`], [`inbound::kafka`]), the pure
//! functions both adapters call, without linking a broker client.

use std::time::{Duration, SystemTime};

use backstop::headers::{AmqpValue, HeaderValue};
use backstop::inbound::{self, AmqpDelivery, AmqpProperties, KafkaRecord};
use backstop::message::IdSource;
use backstop::{Message, attempt, wire};
use bytes::Bytes;

/// Reads fuzz bytes as a sequence of plain values; past the end, zeros.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        *first
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    /// Up to 255 bytes, its length read first.
    fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    fn maybe_text(&mut self) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.text())
    }

    /// An AMQP field value of any type; `depth` bounds nesting.
    fn amqp_value(&mut self, depth: u8) -> AmqpValue {
        let bytes = |r: &mut Self| Bytes::copy_from_slice(r.bytes());
        match self.byte() % 12 {
            0 => AmqpValue::Boolean(self.byte() & 1 == 1),
            1 => AmqpValue::ShortShortInt(self.byte() as i8),
            2 => AmqpValue::LongInt(self.u64() as i32),
            3 => AmqpValue::LongLongInt(self.u64() as i64),
            4 => AmqpValue::Double(self.u64()),
            5 => AmqpValue::Decimal {
                scale: self.byte(),
                value: self.u64() as u32,
            },
            6 => AmqpValue::ShortString(self.text()),
            7 => AmqpValue::Timestamp(self.u64()),
            8 => AmqpValue::ByteArray(bytes(self)),
            9 if depth > 0 => {
                let n = self.byte() % 4;
                AmqpValue::Array((0..n).map(|_| self.amqp_value(depth - 1)).collect())
            }
            10 if depth > 0 => {
                let n = self.byte() % 4;
                AmqpValue::Table(
                    (0..n)
                        .map(|_| (self.text(), self.amqp_value(depth - 1)))
                        .collect(),
                )
            }
            11 => AmqpValue::Void,
            _ => AmqpValue::LongString(bytes(self)),
        }
    }
}

/// The wire's latest time (9999-12-31T23:59:59.999Z).
fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(wire::MAX_TIME_MILLIS)
}

/// The `inbound` target: `data` read as an AMQP delivery and a Kafka
/// record, each converted, never a panic, and checked against the rules:
/// a timestamp is kept when in range and `None` otherwise; a message id is
/// never empty; an id-less AMQP message gets the same digest id on every
/// redelivery; the attempt is the header's; every header arrives in order
/// with its type and bytes.
pub fn inbound(data: &[u8]) {
    let mut r = Reader { data };
    amqp(&mut r);
    kafka(&mut r);
}

fn amqp(r: &mut Reader<'_>) {
    let properties = AmqpProperties {
        content_type: r.maybe_text(),
        content_encoding: r.maybe_text(),
        delivery_mode: Some(r.byte()),
        priority: Some(r.byte()),
        correlation_id: r.maybe_text(),
        reply_to: r.maybe_text(),
        expiration: r.maybe_text(),
        message_id: r.maybe_text(),
        timestamp: (r.byte() & 1 == 1).then(|| r.u64()),
        kind: r.maybe_text(),
        user_id: r.maybe_text(),
        app_id: r.maybe_text(),
        cluster_id: r.maybe_text(),
    };
    let count = r.byte() % 8;
    let headers: Vec<(String, AmqpValue)> = (0..count)
        .map(|_| {
            let name = r.text();
            let value = r.amqp_value(2);
            (name, value)
        })
        .collect();
    let delivery = AmqpDelivery {
        queue: r.text().into(),
        delivery_tag: Some(r.u64()),
        redelivered: false,
        properties: properties.clone(),
        headers: headers.clone(),
        body: Bytes::copy_from_slice(r.bytes()),
    };
    // A quorum queue counts redeliveries in a header of its own.
    let mut counted = headers.clone();
    counted.push(("x-delivery-count".to_owned(), AmqpValue::LongLongInt(1)));
    let redelivery = AmqpDelivery {
        delivery_tag: Some(r.u64()),
        redelivered: true,
        headers: counted,
        ..delivery.clone()
    };
    let message = inbound::amqp(delivery);
    let again = inbound::amqp(redelivery);
    check_common(&message);
    if !headers.iter().any(|(n, _)| n == wire::MESSAGE_ID) {
        assert_eq!(
            message.meta.message_id, again.meta.message_id,
            "a redelivery keeps the message id"
        );
    }
    let expected = properties
        .timestamp
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .filter(|t| *t <= latest());
    assert_eq!(
        message.meta.timestamp, expected,
        "an AMQP timestamp is kept in range, else none"
    );
    // Every header arrives in order with its type and bytes, but the
    // broker's dead-lettering records.
    let expected: Vec<(&str, HeaderValue)> = headers
        .iter()
        .filter(|(n, _)| !inbound::is_dead_letter_record(n))
        .map(|(n, v)| (n.as_str(), inbound::amqp_header_value(v.clone())))
        .collect();
    let arrived: Vec<(&str, HeaderValue)> = message
        .headers
        .iter_values()
        .map(|(n, v)| (n, v.clone()))
        .collect();
    assert_eq!(arrived, expected, "every header, typed, in order");
    let producer_id = properties
        .message_id
        .as_deref()
        .is_some_and(|id| !id.is_empty())
        || message
            .header(wire::MESSAGE_ID)
            .is_some_and(|id| !id.is_empty());
    assert_eq!(
        message.meta.id_source == IdSource::Digest,
        !producer_id,
        "the digest only stands in for a missing producer id"
    );
}

fn kafka(r: &mut Reader<'_>) {
    let topic = r.text();
    let partition = r.u64() as i32;
    let offset = r.u64() as i64;
    let timestamp_millis = (r.byte() & 1 == 1).then(|| r.u64() as i64);
    let key = (r.byte() & 1 == 1).then(|| r.bytes());
    let payload = (r.byte() & 1 == 1).then(|| r.bytes());
    let count = r.byte() % 8;
    let headers: Vec<(String, Option<&[u8]>)> = (0..count)
        .map(|_| {
            let name = r.text();
            let value = (r.byte() & 1 == 1).then(|| r.bytes());
            (name, value)
        })
        .collect();
    let retry_of = r.maybe_text();
    let record = KafkaRecord {
        topic: topic.as_str().into(),
        partition,
        offset,
        timestamp_millis,
        key,
        payload,
        headers: headers.iter().map(|(n, v)| (n.as_str(), *v)).collect(),
        retry_of: retry_of.as_deref(),
    };
    let message = inbound::kafka(&record);
    check_common(&message);
    let arrived: Vec<(&str, Option<Bytes>)> = message
        .headers
        .iter_values()
        .map(|(n, v)| (n, v.to_bytes()))
        .collect();
    let expected: Vec<(&str, Option<Bytes>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.map(Bytes::copy_from_slice)))
        .collect();
    assert_eq!(
        arrived, expected,
        "every header byte for byte, nulls and repeated names included"
    );
    let expected = timestamp_millis
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .filter(|t| *t <= latest());
    assert_eq!(
        message.meta.timestamp, expected,
        "a Kafka timestamp is kept when 0..=9999-12-31, else none (-1 included)"
    );
    assert_eq!(
        message.payload,
        payload.unwrap_or_default(),
        "the value is the payload"
    );
    assert_eq!(message.key.as_deref(), key, "the key is kept");
    assert_eq!(
        message.meta.origin(),
        retry_of.as_deref().unwrap_or(&topic),
        "the origin is the adapter's table's, else the topic"
    );
    if message.meta.id_source == IdSource::Position {
        assert_eq!(
            message.meta.message_id,
            inbound::position_id(&topic, partition, offset),
            "an id-less record is identified by its position"
        );
    }
}

/// What holds for every converted message.
fn check_common(message: &Message) {
    assert!(
        !message.meta.message_id.is_empty(),
        "a message id is never empty"
    );
    assert_eq!(
        message.meta.attempt,
        attempt::from_headers(&message.headers),
        "the attempt is the header's"
    );
    assert!(
        message.meta.conversion_error.is_none(),
        "the pure conversion never fails"
    );
}
