//! Time to live at consume: expired messages are not run.

use super::*;

fn stamped(age: Duration, now: SystemTime) -> Message {
    let mut m = Message::new("x");
    m.meta.timestamp = Some(now - age);
    m
}

#[test]
fn a_message_older_than_its_time_to_live_expires_and_a_younger_one_does_not() {
    let now = SystemTime::now();
    let ttl = TimeToLive::max_age(Duration::from_secs(60));
    let old = ttl.expired(&stamped(Duration::from_secs(61), now), now);
    assert!(
        old.as_deref().is_some_and(|r| r.contains("1m 1s old")),
        "{old:?}"
    );
    assert_eq!(
        ttl.expired(&stamped(Duration::from_secs(59), now), now),
        None
    );
}

#[test]
fn a_message_without_a_timestamp_never_expires_by_age() {
    let ttl = TimeToLive::max_age(Duration::ZERO);
    assert_eq!(ttl.expired(&Message::new("x"), SystemTime::now()), None);
}

#[test]
fn a_timestamp_in_the_future_is_age_zero() {
    let now = SystemTime::now();
    let mut m = Message::new("x");
    m.meta.timestamp = Some(now + Duration::from_secs(3600));
    assert_eq!(TimeToLive::max_age(Duration::ZERO).expired(&m, now), None);
}

#[test]
fn the_expiry_header_is_read_as_rfc_3339_or_epoch_millis_and_anything_else_is_ignored() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let ttl = TimeToLive::header_only();
    let with = |v: &str| Message::new("x").with_header(wire::EXPIRES_AT, v);
    assert!(ttl.expired(&with("2020-01-01T00:00:00Z"), now).is_some());
    assert!(
        ttl.expired(&with("2020-01-01T02:00:00+02:00"), now)
            .is_some()
    );
    assert!(
        ttl.expired(&with(" 2020-01-01T00:00:00.5+00:00 "), now)
            .is_some()
    );
    assert!(ttl.expired(&with("1999999999999"), now).is_some());
    assert_eq!(ttl.expired(&with("2040-01-01T00:00:00Z"), now), None);
    assert_eq!(ttl.expired(&with("2033-05-18T05:33:21+02:00"), now), None);
    assert_eq!(ttl.expired(&with("2000000000001"), now), None);
    // Epoch seconds (a JWT `exp`), a time without an offset, junk: ignored.
    for junk in [
        "",
        "soon",
        "-5",
        "1767225600",
        "2020-01-01T00:00:00",
        "99999999999999999999999",
        "2020-13-45T00:00:00Z",
    ] {
        assert_eq!(ttl.expired(&with(junk), now), None, "{junk:?}");
    }
    // The header applies with a maximum age too, whatever the age.
    let young = TimeToLive::max_age(Duration::from_secs(3600));
    let mut m = with("2020-01-01T00:00:00Z");
    m.meta.timestamp = Some(now);
    assert!(young.expired(&m, now).is_some());
}

#[test]
fn a_redriven_message_never_expires() {
    let now = SystemTime::now();
    let mut m = stamped(Duration::from_secs(3600), now)
        .with_header(wire::EXPIRES_AT, "2020-01-01T00:00:00Z")
        .with_header(wire::REPLAYED, "1");
    assert_eq!(TimeToLive::max_age(Duration::ZERO).expired(&m, now), None);
    m.headers.insert(wire::REPLAYED.to_owned(), "0".to_owned());
    assert!(
        TimeToLive::max_age(Duration::ZERO)
            .expired(&m, now)
            .is_some()
    );
}

#[test]
fn a_retry_copy_is_as_old_as_its_first_consumption_and_a_forged_header_is_not_believed() {
    let now = SystemTime::now();
    let ttl = TimeToLive::max_age(Duration::from_secs(60));
    let first = wire::format_time(now - Duration::from_secs(600));
    // A fresh copy on a retry topic, of a message consumed 10 minutes ago.
    let mut copy = stamped(Duration::ZERO, now).with_header(wire::ORIGINAL_TIMESTAMP, first);
    copy.meta.retry_of = Some("orders".into());
    assert!(ttl.expired(&copy, now).is_some());
    // The same header on a message from its source: its own timestamp counts.
    copy.meta.retry_of = None;
    assert_eq!(ttl.expired(&copy, now), None);
}

#[test]
fn the_failure_carries_kind_expired_and_the_attempts_spent() {
    let f = TimeToLive::failure("old".into(), 3, SystemTime::UNIX_EPOCH);
    assert_eq!(
        (f.kind, f.attempts, f.message.as_str()),
        (ErrorKind::Expired, 2, "old")
    );
}
