//! The copy rules: what a retry copy, a dead letter and a redrive copy carry.

use super::*;

#[test]
fn a_redrive_copy_starts_a_new_count() {
    let letter = Message::new("x")
        .with_message_id("m")
        .with_header(wire::ATTEMPT, "5")
        .with_header(wire::REPLAYED, "1")
        .with_header(wire::ERROR_KIND, "exhausted")
        .with_header(wire::ORIGINAL_SOURCE, "orders");
    let copy = redrive(&letter);
    assert_eq!(copy.header(wire::ATTEMPT), Some("1"));
    assert_eq!(copy.header(wire::REPLAYED), Some("2"));
    assert_eq!(copy.header(wire::ERROR_KIND), None);
    assert_eq!(copy.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(copy.meta.message_id, "m");
}
use std::time::Duration;

fn consumed() -> Message {
    let mut m = Message::new("{}")
        .with_message_id("m-1")
        .with_header("app", "x");
    m.meta.source = "orders".into();
    m.meta.partition = Some(2);
    m.meta.offset = Some(40);
    m
}

#[test]
fn retry_copy_increments_attempt_and_keeps_origin() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let copy = retry(&consumed(), 2, t0 + Duration::from_secs(30), t0);
    assert_eq!(copy.header(wire::ATTEMPT), Some("2"));
    assert_eq!(copy.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(copy.header(wire::ORIGINAL_PARTITION), Some("2"));
    assert_eq!(copy.header(wire::ORIGINAL_OFFSET), Some("40"));
    assert_eq!(copy.header(wire::MESSAGE_ID), Some("m-1"));
    assert_eq!(copy.header("app"), Some("x"));
    assert!(copy.header(wire::DUE).is_some());

    // A second hop, consumed from a retry topic, keeps the first origin.
    let mut hop = copy.clone();
    hop.meta.source = "orders.g.retry.30s".into();
    hop.meta.retry_of = Some("orders".into());
    hop.meta.offset = Some(7);
    let again = retry(
        &hop,
        3,
        t0 + Duration::from_secs(90),
        t0 + Duration::from_secs(60),
    );
    assert_eq!(again.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(again.header(wire::ORIGINAL_OFFSET), Some("40"));
    assert_eq!(
        again.header(wire::FIRST_FAILURE),
        copy.header(wire::FIRST_FAILURE)
    );
    assert_eq!(again.header(wire::ATTEMPT), Some("3"));
}

#[test]
fn dead_letter_carries_the_full_header_set() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let failure = Failure {
        kind: ErrorKind::Exhausted,
        message: "x".repeat(5000),
        attempts: 5,
        first_failure: t0,
        last_failure: t0 + Duration::from_secs(9),
    };
    let letter = dead_letter(&consumed(), &failure);
    assert_eq!(letter.payload, consumed().payload);
    assert_eq!(letter.header(wire::ERROR_KIND), Some("exhausted"));
    assert_eq!(letter.header(wire::ERROR).map(str::len), Some(1024));
    assert_eq!(letter.header(wire::ATTEMPT), Some("5"));
    assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(
        letter.header(wire::FIRST_FAILURE),
        Some("1970-01-01T00:16:40.000Z")
    );
    assert_eq!(
        letter.header(wire::LAST_FAILURE),
        Some("1970-01-01T00:16:49.000Z")
    );
    assert_eq!(dead_letter_kind(&letter), Some(ErrorKind::Exhausted));
}

#[test]
fn origin_headers_from_a_producer_are_rewritten() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let forged = consumed()
        .with_header(wire::ORIGINAL_SOURCE, "payments")
        .with_header(wire::ORIGINAL_OFFSET, "1")
        .with_header(wire::ORIGINAL_PARTITION, "9");
    let failure = Failure {
        kind: ErrorKind::Permanent,
        message: "no".into(),
        attempts: 1,
        first_failure: t0,
        last_failure: t0,
    };
    for copy in [dead_letter(&forged, &failure), retry(&forged, 2, t0, t0)] {
        assert_eq!(copy.header(wire::ORIGINAL_SOURCE), Some("orders"));
        assert_eq!(copy.header(wire::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(copy.header(wire::ORIGINAL_OFFSET), Some("40"));
    }
    // RabbitMQ has no partition or offset: a forged one is removed.
    let mut rabbit = forged.clone();
    rabbit.meta.partition = None;
    rabbit.meta.offset = None;
    let letter = dead_letter(&rabbit, &failure);
    assert_eq!(letter.header(wire::ORIGINAL_OFFSET), None);
    assert_eq!(letter.header(wire::ORIGINAL_PARTITION), None);
}

#[test]
fn a_first_failure_that_is_not_a_time_is_replaced() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let garbage = consumed().with_header(wire::FIRST_FAILURE, "yesterday");
    let failure = Failure {
        kind: ErrorKind::Permanent,
        message: "no".into(),
        attempts: 1,
        first_failure: t0,
        last_failure: t0,
    };
    let letter = dead_letter(&garbage, &failure);
    assert_eq!(
        letter.header(wire::FIRST_FAILURE),
        Some("1970-01-01T00:16:40.000Z")
    );
    let copy = retry(&garbage, 2, t0, t0);
    assert_eq!(
        copy.header(wire::FIRST_FAILURE),
        Some("1970-01-01T00:16:40.000Z")
    );
}
