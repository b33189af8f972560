use super::*;

#[test]
fn field_values_keep_their_types_both_ways() {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::ShortInt(-2));
    let mut table = FieldTable::default();
    table.insert("long".into(), AMQPValue::LongString("text".into()));
    table.insert("int".into(), AMQPValue::LongInt(-5));
    table.insert("big".into(), AMQPValue::LongLongInt(1 << 40));
    table.insert("u8".into(), AMQPValue::ShortShortUInt(7));
    table.insert("flag".into(), AMQPValue::Boolean(true));
    table.insert("f".into(), AMQPValue::Double(f64::NAN));
    table.insert(
        "dec".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 150,
        }),
    );
    table.insert("nested".into(), AMQPValue::FieldTable(nested));
    table.insert(
        "array".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Timestamp(9)].into()),
    );
    table.insert("bytes".into(), AMQPValue::ByteArray(vec![0, 0xff].into()));
    table.insert("void".into(), AMQPValue::Void);
    table.insert(
        "bad-utf8".into(),
        AMQPValue::LongString(LongString::from(vec![0xff, b'a'])),
    );
    table.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    let h = headers_from_table(Some(&table));
    assert_eq!(h.get("long"), Some("text"));
    assert_eq!(
        h.get_value("int"),
        Some(&HeaderValue::Amqp(AmqpValue::LongInt(-5)))
    );
    assert_eq!(
        h.get_value("dec").map(ToString::to_string).as_deref(),
        Some("1.5")
    );
    assert_eq!(h.get("bad-utf8"), None, "not UTF-8: no text view");
    assert!(
        !h.contains_key("x-death"),
        "the broker's record is not carried"
    );
    let back = table_from_headers(&h).unwrap();
    let mut expected = table.inner().clone();
    expected.remove("x-death");
    // NaN is not equal to itself: compare the bits, then the rest.
    let bits = |t: &std::collections::BTreeMap<ShortString, AMQPValue>| match t.get("f") {
        Some(AMQPValue::Double(d)) => d.to_bits(),
        _ => 0,
    };
    assert_eq!(bits(back.inner()), bits(&expected));
    let mut back = back.inner().clone();
    back.remove("f");
    expected.remove("f");
    assert_eq!(back, expected, "every value written back as it came");
}

#[test]
fn message_id_comes_from_the_property_then_the_header() {
    let with_header = BasicProperties::default().with_headers(
        table_from_headers(&Headers::from_iter([(wire::MESSAGE_ID, "from-header")])).unwrap(),
    );
    let m = message_from_delivery("q", Some(7), true, &with_header, b"x".to_vec());
    assert_eq!(m.meta.message_id, "from-header");
    assert_eq!(m.meta.delivery_tag, Some(7));
    assert!(m.meta.redelivered);
    assert_eq!(&*m.meta.source, "q");
    assert_eq!(m.meta.attempt, 1);

    let with_property = with_header.with_message_id("from-property".into());
    let m = message_from_delivery("q", Some(1), false, &with_property, Vec::new());
    assert_eq!(m.meta.message_id, "from-property");

    let none = message_from_delivery("q", Some(1), false, &BasicProperties::default(), Vec::new());
    assert_eq!(none.meta.message_id.len(), 32, "a digest id is assigned");
    assert_eq!(none.meta.id_source, IdSource::Digest);
}

#[test]
fn timestamps_before_1970_or_past_9999_are_none_not_a_panic() {
    for secs in [u64::MAX, 1 << 63, (-1i64) as u64, (-86_400i64) as u64] {
        let props = BasicProperties::default().with_timestamp(secs);
        let m = message_from_delivery("q", Some(1), false, &props, b"{}".to_vec());
        assert_eq!(m.meta.timestamp, None, "timestamp {secs}");
        assert!(m.meta.conversion_error.is_none());
    }
    let props = BasicProperties::default().with_timestamp(1_700_000_000);
    let m = message_from_delivery("q", Some(1), false, &props, Vec::new());
    assert_eq!(
        m.meta.timestamp,
        Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
    );
}

#[test]
fn an_id_less_message_keeps_its_id_on_redelivery() {
    let mut table = FieldTable::default();
    table.insert("bin".into(), AMQPValue::ByteArray(vec![0xff, 0].into()));
    table.insert("app".into(), AMQPValue::LongString("v".into()));
    let props = BasicProperties::default()
        .with_headers(table)
        .with_content_type("application/json".into())
        .with_timestamp(u64::MAX);
    let first = message_from_delivery("q", Some(1), false, &props, b"{}".to_vec());
    let again = message_from_delivery("q", Some(2), true, &props, b"{}".to_vec());
    assert_eq!(first.meta.message_id, again.meta.message_id);
    let other = props.clone().with_content_type("text/plain".into());
    let other = message_from_delivery("q", Some(3), false, &other, b"{}".to_vec());
    assert_ne!(first.meta.message_id, other.meta.message_id);
}

#[test]
fn attempt_comes_from_the_header() {
    let props = BasicProperties::default()
        .with_headers(table_from_headers(&Headers::from_iter([(wire::ATTEMPT, "3")])).unwrap());
    assert_eq!(
        message_from_delivery("q", Some(1), false, &props, Vec::new())
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
    assert_eq!(h.get(wire::MESSAGE_ID), Some("m-1"));
    assert_eq!(h.get("app"), Some("v"));
    assert!(matches!(
        p.headers().as_ref().and_then(|t| t.inner().get("app")),
        Some(AMQPValue::LongString(_))
    ));
}

#[test]
fn a_consumed_message_keeps_its_properties_on_every_copy() {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_type("order.placed".into())
        .with_app_id("shop".into())
        .with_priority(7)
        .with_timestamp(1_600_000_000)
        .with_expiration("1000".into())
        .with_user_id("someone".into());
    let consumed = message_from_delivery("q", Some(1), false, &props, b"x".to_vec());
    let failure = backstop::error::Failure {
        kind: backstop::ErrorKind::Permanent,
        message: "no".into(),
        attempts: 1,
        first_failure: UNIX_EPOCH,
        last_failure: UNIX_EPOCH,
    };
    let letter = backstop::copy::dead_letter(&consumed, &failure);
    let p = properties_for(&letter).unwrap();
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    assert_eq!(text(p.content_type()).as_deref(), Some("application/json"));
    assert_eq!(text(p.content_encoding()).as_deref(), Some("gzip"));
    assert_eq!(text(p.correlation_id()).as_deref(), Some("corr-1"));
    assert_eq!(text(p.reply_to()).as_deref(), Some("replies"));
    assert_eq!(text(p.kind()).as_deref(), Some("order.placed"));
    assert_eq!(text(p.app_id()).as_deref(), Some("shop"));
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(
        *p.timestamp(),
        Some(1_600_000_000),
        "the original timestamp"
    );
    assert_eq!(*p.expiration(), None, "no per-message TTL on a copy");
    assert_eq!(
        *p.user_id(),
        None,
        "the broker checks user_id against the connection"
    );
    assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
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
            .map(str::len),
        Some(300)
    );
}
