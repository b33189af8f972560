//! The `headers` target: arbitrary headers through the attempt and message
//! id rules, the `wire` helpers and the retry and dead-letter copies.

use std::time::{Duration, SystemTime};

use backstop::error::Failure;
use backstop::headers::AmqpValue;
use backstop::inbound::{self, AmqpDelivery, KafkaRecord};
use backstop::message::Headers;
use backstop::{ErrorKind, Message, attempt, copy, wire};
use bytes::Bytes;

/// "Now" at clock 0: 2025-01-01T00:00:00Z.
const EPOCH_2025: Duration = Duration::from_secs(1_735_689_600);

/// The retry delay when the input names none.
const DEFAULT_DELAY: Duration = Duration::from_secs(30);

/// The longest failure message an input can build with `@repeat`.
const MAX_ERROR_INPUT: usize = 64 * 1024;

/// The headers backstop writes on a dead letter whatever was there before
/// (the first failure is checked on its own: kept only when it is a time;
/// the origin by `check_origin`).
const DEAD_LETTER_WRITES: [&str; 11] = [
    wire::MESSAGE_ID,
    wire::ORIGINAL_SOURCE,
    wire::ORIGINAL_PARTITION,
    wire::ORIGINAL_OFFSET,
    wire::ORIGINAL_TIMESTAMP,
    wire::ATTEMPT,
    wire::ERROR_KIND,
    wire::ERROR,
    wire::FIRST_FAILURE,
    wire::LAST_FAILURE,
    wire::DUE,
];

/// The headers backstop writes on a retry copy whatever was there before
/// (the first failure is checked on its own: kept only when it is a time).
const RETRY_WRITES: [&str; 8] = [
    wire::MESSAGE_ID,
    wire::ORIGINAL_SOURCE,
    wire::ORIGINAL_PARTITION,
    wire::ORIGINAL_OFFSET,
    wire::ORIGINAL_TIMESTAMP,
    wire::ATTEMPT,
    wire::FIRST_FAILURE,
    wire::DUE,
];

/// The `headers` target's input, read from lines of text (invalid UTF-8
/// becomes U+FFFD, a three-byte character for the cutting rules).
///
/// ```text
/// name:value        a header, split at the first ':' (no ':' means an empty value)
/// @source=orders    where the first delivery comes from (meta source)
/// @partition=2      its partition (i32); @offset=40 its offset (i64)
/// @hop=orders.retry where the retry copy is consumed from
/// @error=text       a line of the failure's message
/// @repeat=N         the message repeated N times (to pass 1 KiB)
/// @kind=exhausted   the failure's kind, a wire name (else permanent)
/// @attempts=N       the failure's attempt count (else the delivery's attempt)
/// @clock=N          now = 2025-01-01T00:00:00Z + N nanoseconds
/// @delay=1m 30s     the retry delay, read by wire::parse_duration (else 30s)
/// ```
///
/// A line starting with `@` that is not one of these is a header; empty
/// lines are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderInput {
    /// The headers of the first delivery.
    pub headers: Headers,
    /// Its source queue or topic.
    pub source: String,
    /// Its partition, if any.
    pub partition: Option<i32>,
    /// Its offset, if any.
    pub offset: Option<i64>,
    /// Where the retry copy is consumed from (else `<source>.retry`).
    pub hop: Option<String>,
    /// The failure's message.
    pub error: String,
    /// The failure's kind, as written in the input.
    pub kind: Option<String>,
    /// The failure's attempt count, if given.
    pub attempts: Option<u32>,
    /// Time since 2025-01-01T00:00:00Z at which the failure happens.
    pub clock: Duration,
    /// The retry delay's text, if given.
    pub delay: Option<String>,
}

impl HeaderInput {
    /// Reads an input; never fails (anything unreadable becomes a header).
    pub fn parse(data: &[u8]) -> Self {
        let text = String::from_utf8_lossy(data);
        let mut input = HeaderInput::default();
        let mut error = Vec::new();
        let mut repeat = 1usize;
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            if let Some((name, value)) = line.strip_prefix('@').and_then(|d| d.split_once('=')) {
                let known = match name {
                    "source" => {
                        input.source = value.to_owned();
                        true
                    }
                    "partition" => {
                        input.partition = value.parse().ok();
                        true
                    }
                    "offset" => {
                        input.offset = value.parse().ok();
                        true
                    }
                    "hop" => {
                        input.hop = Some(value.to_owned());
                        true
                    }
                    "error" => {
                        error.push(value);
                        true
                    }
                    "repeat" => {
                        repeat = value.parse().unwrap_or(1);
                        true
                    }
                    "kind" => {
                        input.kind = Some(value.to_owned());
                        true
                    }
                    "attempts" => {
                        input.attempts = value.parse().ok();
                        true
                    }
                    "clock" => {
                        input.clock = Duration::from_nanos(value.parse().unwrap_or(0));
                        true
                    }
                    "delay" => {
                        input.delay = Some(value.to_owned());
                        true
                    }
                    _ => false,
                };
                if known {
                    continue;
                }
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            input.headers.insert(name.to_owned(), value.to_owned());
        }
        let error = error.join("\n");
        let repeat = repeat.clamp(1, MAX_ERROR_INPUT / error.len().max(1));
        input.error = error.repeat(repeat);
        input
    }
}

/// The `headers` target: `data` read as a [`HeaderInput`], never a panic.
///
/// Every header value (and the error text and delay) goes through
/// `wire::parse_time`, `wire::parse_duration` and `wire::truncate`. The
/// headers are received as a broker adapter does (message id from
/// `x-backstop-message-id`, else assigned; attempt from
/// `x-backstop-attempt`), then a dead letter and a delayed-retry copy are
/// built as the dead-letter and retry layers do, each received again and
/// checked against the header rules: the attempt is incremented on a retry
/// copy, the message id and origin are carried unchanged, the error text is
/// at most 1 KiB, the other headers are kept.
pub fn headers(data: &[u8]) {
    let input = HeaderInput::parse(data);
    let now = SystemTime::UNIX_EPOCH + EPOCH_2025 + input.clock;

    for (name, value) in input.headers.iter() {
        text_helpers(name);
        text_helpers(value);
    }
    text_helpers(&input.error);
    if let Some(delay) = &input.delay {
        text_helpers(delay);
    }
    for kind in ErrorKind::ALL {
        assert_eq!(
            ErrorKind::parse(kind.as_str()),
            Some(kind),
            "wire names round-trip"
        );
        assert_eq!(
            kind.to_string(),
            kind.as_str(),
            "a kind displays as its wire name"
        );
    }

    let position = input.partition.zip(input.offset);
    let received = receive(input.headers.clone(), &input.source, position, None);
    check_received(&received);

    // The dead-letter layer, after the retry layer gave up at `now`.
    let first = first_failure(&received).unwrap_or(now);
    let kind = input
        .kind
        .as_deref()
        .and_then(ErrorKind::parse)
        .unwrap_or(ErrorKind::Permanent);
    let failure = Failure {
        kind,
        message: input.error.clone(),
        attempts: input.attempts.unwrap_or(received.meta.attempt),
        first_failure: first,
        last_failure: now,
    };
    let letter = copy::dead_letter(&received, &failure);
    check_dead_letter(&received, &failure, &letter);
    let redelivered = receive(letter.headers.clone(), "dlq", Some((0, 0)), None);
    assert_eq!(
        redelivered.meta.message_id, received.meta.message_id,
        "a dead letter carries the message id"
    );
    assert_eq!(
        redelivered.meta.attempt,
        failure.attempts.max(attempt::FIRST),
        "a dead letter carries the attempt count"
    );

    // The retry layer, handing a long delay to the retry sink at `now`.
    let Some(next) = received.meta.attempt.checked_add(1) else {
        // Only reachable with attempt u32::MAX, which is always exhausted.
        return;
    };
    let delay = match &input.delay {
        Some(text) => duration(text),
        None => Some(DEFAULT_DELAY),
    };
    let Some(due) = delay.and_then(|d| now.checked_add(d)) else {
        return;
    };
    let retry = copy::retry(&received, next, due, first);
    check_retry(&received, next, due, first, &retry);

    // The copy consumed from the retry queue: one attempt later, same id.
    let hop_source = input
        .hop
        .clone()
        .unwrap_or_else(|| format!("{}.retry", input.source));
    let hop = Message {
        payload: retry.payload.clone(),
        key: retry.key.clone(),
        ..receive(
            retry.headers.clone(),
            &hop_source,
            Some((0, 0)),
            Some(&input.source),
        )
    };
    assert_eq!(
        hop.meta.attempt,
        received.meta.attempt + 1,
        "a retry copy is received one attempt later"
    );
    assert_eq!(
        hop.meta.message_id, received.meta.message_id,
        "a retry copy carries the message id"
    );

    // That attempt fails for good: the dead letter keeps the first origin
    // (the source from the adapter's table, the first position).
    let failure = Failure {
        attempts: hop.meta.attempt,
        first_failure: first_failure(&hop).unwrap_or(due),
        last_failure: due,
        ..failure
    };
    let letter = copy::dead_letter(&hop, &failure);
    check_dead_letter(&hop, &failure, &letter);
    for name in [
        wire::ORIGINAL_SOURCE,
        wire::ORIGINAL_PARTITION,
        wire::ORIGINAL_OFFSET,
    ] {
        if let Some(origin) = retry.header(name) {
            assert_eq!(
                letter.header(name),
                Some(origin),
                "{name} is kept across a retry hop"
            );
        }
    }
    let redelivered = receive(letter.headers.clone(), "dlq", Some((0, 0)), None);
    assert_eq!(
        redelivered.meta.message_id, received.meta.message_id,
        "the message id survives a retry hop and a dead letter"
    );
    assert_eq!(
        redelivered.meta.attempt, next,
        "the dead letter counts the hop"
    );
}

/// A message as a broker adapter receives it, through backstop's own
/// conversion: [`inbound::kafka`] when there is a partition and an offset
/// (message id from [`wire::MESSAGE_ID`], else the position), else
/// [`inbound::amqp`] (else a digest); the attempt from [`wire::ATTEMPT`].
/// `retry_of` is the source a retry topic belongs to (the adapter's table).
fn receive(
    headers: Headers,
    source: &str,
    position: Option<(i32, i64)>,
    retry_of: Option<&str>,
) -> Message {
    let received = match position {
        Some((partition, offset)) => inbound::kafka(&KafkaRecord {
            topic: source.into(),
            partition,
            offset,
            key: Some(b"k"),
            payload: Some(b"{}"),
            headers: headers
                .iter()
                .map(|(n, v)| (n, Some(v.as_bytes())))
                .collect(),
            retry_of,
            ..KafkaRecord::default()
        }),
        None => {
            let mut m = inbound::amqp(AmqpDelivery {
                queue: source.into(),
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_owned(),
                            AmqpValue::LongString(Bytes::copy_from_slice(v.as_bytes())),
                        )
                    })
                    .collect(),
                body: Bytes::from_static(b"{}"),
                ..AmqpDelivery::default()
            });
            m.key = Some(Bytes::from_static(b"k"));
            m
        }
    };
    assert_eq!(
        received.headers.iter().collect::<Vec<_>>(),
        headers.iter().collect::<Vec<_>>(),
        "text headers arrive unchanged"
    );
    received
}

/// The first failure the retry layer reads from a delivery.
fn first_failure(message: &Message) -> Option<SystemTime> {
    message
        .header(wire::FIRST_FAILURE)
        .and_then(wire::parse_time)
}

/// The latest time the wire can write (9999-12-31T23:59:59.999Z): later
/// times are written as that.
fn wire_end() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(wire::MAX_TIME_MILLIS)
}

/// `wire::parse_duration`: `None` for what is not a duration, never a panic.
fn duration(text: &str) -> Option<Duration> {
    wire::parse_duration(text)
}

/// The `wire` text helpers on any text: never a panic, and their rules.
fn text_helpers(text: &str) {
    if let Some(time) = wire::parse_time(text) {
        let written = wire::format_time(time);
        let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok();
        let millis = since(time).map(|d| Duration::new(d.as_secs(), d.subsec_millis() * 1_000_000));
        assert_eq!(
            wire::parse_time(&written).and_then(since),
            millis,
            "a parsed time formats with millisecond precision and parses back: {text:?} -> {written:?}"
        );
    }
    let _ = duration(text);
    let len = text.len();
    for max in [
        0,
        1,
        2,
        3,
        4,
        len / 2,
        len.saturating_sub(1),
        len,
        wire::MAX_ERROR_LEN,
    ] {
        check_truncate(text, max);
    }
}

/// `wire::truncate`: the longest prefix of at most `max` bytes ending on a
/// character boundary.
fn check_truncate(text: &str, max: usize) {
    let cut = wire::truncate(text, max);
    assert!(text.starts_with(cut), "a cut is a prefix");
    if text.len() <= max {
        assert_eq!(cut, text, "text within the limit is not cut");
        return;
    }
    assert!(
        cut.len() <= max,
        "a cut is at most {max} bytes, got {}",
        cut.len()
    );
    let next = text[cut.len()..].chars().next().map_or(0, char::len_utf8);
    assert!(
        cut.len() + next > max,
        "a cut keeps every whole character that fits in {max} bytes"
    );
}

/// A received message's attempt, replay count and dead-letter kind.
fn check_received(message: &Message) {
    let attempt_header = message.header(wire::ATTEMPT);
    assert!(
        message.meta.attempt >= attempt::FIRST,
        "attempts count from 1"
    );
    match attempt_header.map(|v| (v, v.parse::<u32>())) {
        None => assert_eq!(message.meta.attempt, attempt::FIRST, "no header: first"),
        Some((v, Ok(n))) if n >= attempt::FIRST && n.to_string() == v => {
            assert_eq!(message.meta.attempt, n, "the header's attempt");
        }
        Some(_) => {}
    }
    let replayed = message.replayed();
    match message
        .header(wire::REPLAYED)
        .map(|v| (v, v.parse::<u32>()))
    {
        None => assert_eq!(replayed, 0, "an original is replayed 0 times"),
        Some((v, Ok(n))) if n.to_string() == v => assert_eq!(replayed, n, "the header's count"),
        Some(_) => {}
    }
    let kind = message.header(wire::ERROR_KIND);
    assert_eq!(
        copy::dead_letter_kind(message),
        ErrorKind::ALL
            .into_iter()
            .find(|k| Some(k.as_str()) == kind),
        "a dead letter's kind is one of the wire names, exactly"
    );
    let published = message.headers_for_publish();
    assert_eq!(
        published.get(wire::MESSAGE_ID),
        Some(message.meta.message_id.as_str()),
        "a publisher writes the message id"
    );
    assert_eq!(
        published.len(),
        message.headers.len() + usize::from(message.header(wire::MESSAGE_ID).is_none()),
        "a publisher writes the headers and the message id, nothing else"
    );
}

/// The origin headers of `copy`: the source is always where `original` was
/// consumed ([`Meta::origin`](backstop::message::Meta::origin)), whatever a header
/// said; the position is `original`'s own unless it was consumed from a
/// retry topic, which keeps the first consumption's.
fn check_origin(original: &Message, copy: &Message) {
    let meta = &original.meta;
    assert_eq!(
        copy.header(wire::ORIGINAL_SOURCE),
        Some(meta.origin()).filter(|s| !s.is_empty()),
        "the origin is where the message was consumed, never a header's word"
    );
    let position = [
        (
            wire::ORIGINAL_PARTITION,
            meta.partition.map(|p| p.to_string()),
        ),
        (wire::ORIGINAL_OFFSET, meta.offset.map(|o| o.to_string())),
    ];
    for (name, from_meta) in position {
        let expected = match original.header(name) {
            Some(kept) if meta.retry_of.is_some() && from_meta.is_some() => Some(kept),
            _ => from_meta.as_deref(),
        };
        assert_eq!(copy.header(name), expected, "{name} of the consumption");
    }
    let stamped = meta.timestamp.map(wire::format_time);
    let expected = match original.header(wire::ORIGINAL_TIMESTAMP) {
        Some(kept) if meta.retry_of.is_some() && stamped.is_some() => Some(kept),
        _ => stamped.as_deref(),
    };
    assert_eq!(
        copy.header(wire::ORIGINAL_TIMESTAMP),
        expected,
        "the timestamp of the first consumption"
    );
    assert_eq!(
        copy.header(wire::MESSAGE_ID),
        Some(meta.message_id.as_str()),
        "a copy carries the message id"
    );
}

/// Every header of `original` not in `written` is on `copy` unchanged.
fn check_kept(original: &Message, copy: &Message, written: &[&str]) {
    assert_eq!(copy.payload, original.payload, "a copy keeps the payload");
    assert_eq!(copy.key, original.key, "a copy keeps the key");
    for (name, value) in original.headers.iter_values() {
        if !written.contains(&name) {
            assert_eq!(
                copy.headers.get_value(name),
                Some(value),
                "a copy keeps header {name:?}"
            );
        }
    }
}

/// The first-failure header of a copy: carried if present, else stamped.
fn check_first_failure(original: &Message, copy: &Message, first: SystemTime) {
    let header = copy.header(wire::FIRST_FAILURE);
    match original.header(wire::FIRST_FAILURE) {
        Some(carried) if wire::parse_time(carried).is_some() => {
            assert_eq!(
                header,
                Some(carried),
                "a first failure that is a time is carried"
            );
        }
        _ => assert_eq!(
            header,
            Some(wire::format_time(first).as_str()),
            "the first failure is stamped"
        ),
    }
    // The wire rule: RFC 3339 UTC, whatever the original carried.
    assert!(
        header.and_then(wire::parse_time).is_some(),
        "{} is an RFC 3339 time, got {header:?}",
        wire::FIRST_FAILURE
    );
}

/// `copy::dead_letter`: the full header set, the rest kept.
fn check_dead_letter(original: &Message, failure: &Failure, letter: &Message) {
    check_kept(original, letter, &DEAD_LETTER_WRITES);
    check_origin(original, letter);
    check_first_failure(original, letter, failure.first_failure);
    assert_eq!(
        letter.header(wire::ATTEMPT),
        Some(failure.attempts.to_string().as_str()),
        "a dead letter carries the attempt count"
    );
    assert_eq!(
        copy::dead_letter_kind(letter),
        Some(failure.kind),
        "a dead letter carries its kind"
    );
    let error = letter.header(wire::ERROR).unwrap_or_default();
    assert!(
        error.len() <= wire::MAX_ERROR_LEN,
        "the error is cut to 1 KiB, got {} bytes",
        error.len()
    );
    assert!(
        failure.message.starts_with(error),
        "the error header is a prefix of the error"
    );
    if failure.message.len() <= wire::MAX_ERROR_LEN {
        assert_eq!(error, failure.message, "a short error is written whole");
    }
    assert_eq!(
        letter.header(wire::LAST_FAILURE),
        Some(wire::format_time(failure.last_failure).as_str()),
        "a dead letter carries the last failure"
    );
    assert_eq!(letter.header(wire::DUE), None, "a dead letter is not due");
}

/// `copy::retry`: attempt incremented, due time and first failure stamped,
/// origin kept, the rest kept.
fn check_retry(original: &Message, next: u32, due: SystemTime, first: SystemTime, copy: &Message) {
    check_kept(original, copy, &RETRY_WRITES);
    check_origin(original, copy);
    check_first_failure(original, copy, first);
    assert_eq!(
        copy.header(wire::ATTEMPT),
        Some(next.to_string().as_str()),
        "a retry copy carries the next attempt"
    );
    assert_eq!(
        copy.meta.attempt, next,
        "a retry copy is for the next attempt"
    );
    let written = copy.header(wire::DUE).and_then(wire::parse_time);
    assert!(
        written.is_some_and(|w| if due >= wire_end() {
            w == wire_end()
        } else {
            w >= due && w < due + Duration::from_millis(1)
        }),
        "the due time is written rounded up to the millisecond: {due:?} -> {:?}",
        copy.header(wire::DUE)
    );
}
