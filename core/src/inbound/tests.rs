//! The conversions: timestamps out of range, the digest id of an id-less AMQP
//! message, Kafka records, and a conversion that panics.

use bytes::Bytes;

use super::*;
use crate::headers::{AmqpValue, HeaderValue};
use crate::message::IdSource;

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
        topic: "orders.g.retry.5s".into(),
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
