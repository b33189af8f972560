//! The `decode` target: a message body through the decode layer, the key
//! extraction and the dead letter a body that does not decode becomes.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use backstop::decode::DecodeLayer;
use backstop::delivery::Received;
use backstop::error::Failure;
use backstop::idempotency::{Key, KeySource, MAX_KEY_LEN};
use backstop::payload::DecodeError;
use backstop::request::Request;
use backstop::{CancellationToken, ErrorKind, Message, Payload, attempt, copy, handler, wire};
use bytes::Bytes;
use tower::{Layer, Service, service_fn};

/// The header the `Header` key source reads in this target.
const KEY_HEADER: &str = "x-idempotency-key";

/// The example order of the documentation, keyed by its `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, backstop::Payload)]
pub struct Order {
    /// The idempotency key.
    #[payload(key)]
    pub order_id: String,
    /// Any amount.
    pub amount: i64,
}

/// An order keyed by an integer, as `#[payload(key)]` allows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, backstop::Payload)]
pub struct NumberedOrder {
    /// The idempotency key, rendered in decimal.
    #[payload(key)]
    pub id: u64,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
}

/// The `decode` target: `data` as a message body, never a panic.
///
/// The body goes through [`DecodeLayer`] (as the stack runs it) and
/// [`Request::decode`] with several payload limits into [`Order`],
/// [`NumberedOrder`], `serde_json::Value`, `String` and `Bytes`. For each
/// request it checks the documented rules: a body over the limit fails as
/// `TooLarge` with its size and dead-letters as `too_large`; any other
/// failure dead-letters as `decode`; the payload key is the type's `key()`;
/// every stored idempotency key is at most [`MAX_KEY_LEN`] bytes, a raw key
/// when short and `sha256:<hex>` when long.
pub fn decode(data: &[u8]) {
    // The body also serves as a message id and a key header, so long and
    // odd text reaches the `MessageId` and `Header` key sources.
    let text = String::from_utf8_lossy(data).into_owned();
    let message = Message {
        payload: Bytes::copy_from_slice(data),
        ..Message::default()
    }
    .with_message_id(text.clone())
    .with_header(KEY_HEADER, text);

    // The limit's edges: none, exactly the body, one byte short.
    let len = data.len();
    for max in [None, Some(len), Some(len.saturating_sub(1))] {
        through_layer::<Order>(&message, max);
    }
    check::<Order>(&message, None);
    check::<NumberedOrder>(&message, None);
    check::<serde_json::Value>(&message, None);
    check::<serde_json::Value>(&message, Some(len / 2));
    check::<String>(&message, None);
    check::<Bytes>(&message, None);
}

/// Runs `message` through [`DecodeLayer`] and checks the request it yields.
fn through_layer<T: Payload>(message: &Message, max: Option<usize>) {
    type Inner<T> = fn(Request<T>) -> Ready<Result<Request<T>, Infallible>>;
    let inner: Inner<T> = |request| ready(Ok(request));
    let mut service = DecodeLayer::<T>::new(max).layer(service_fn(inner));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        service.poll_ready(&mut cx).is_ready(),
        "the decode layer is ready when its inner service is"
    );
    let received = Received {
        message: message.clone().into(),
        cancel: CancellationToken::new().into(),
        deadline: None,
        transaction: None,
    };
    let Poll::Ready(Ok(request)) = pin!(service.call(received)).poll(&mut cx) else {
        panic!("the decode layer adds no waiting and no error of its own");
    };
    assert_same_decode(
        &request,
        &Request::<T>::decode(message.clone(), CancellationToken::new(), max),
    );
    check_request(message, max, &request);
}

/// Decodes `message` with `Request::decode` and checks the request.
fn check<T: Payload + PartialEq + std::fmt::Debug>(message: &Message, max: Option<usize>) {
    let request = Request::<T>::decode(message.clone(), CancellationToken::new(), max);
    if let Ok(payload) = request.payload() {
        // Decoding is a function of the body: the payload type agrees.
        assert_eq!(
            Ok(payload),
            T::decode(&message.payload).as_ref(),
            "Request::decode yields what the payload type decodes"
        );
    }
    check_request(message, max, &request);
}

/// Both requests decoded the same body alike.
fn assert_same_decode<T: Payload>(a: &Request<T>, b: &Request<T>) {
    assert_eq!(
        a.payload().err(),
        b.payload().err(),
        "the same decode error"
    );
    assert_eq!(a.payload_key(), b.payload_key(), "the same payload key");
    assert_eq!(a.attempt(), b.attempt(), "the same attempt");
}

/// The rules every decoded request follows.
fn check_request<T: Payload>(message: &Message, max: Option<usize>, request: &Request<T>) {
    let size = message.payload.len();
    assert_eq!(request.message(), message, "the message travels unchanged");
    assert_eq!(
        request.attempt(),
        message.meta.attempt.max(attempt::FIRST),
        "a request's attempt is the message's, at least the first"
    );

    match (max, request.payload()) {
        (Some(max), payload) if size > max => {
            assert_eq!(
                payload.err(),
                Some(&DecodeError::TooLarge { size, max }),
                "a body over the limit is too large, with its size and the limit"
            );
            assert_eq!(request.payload_key(), None, "no key without a payload");
        }
        (_, Ok(payload)) => {
            assert_eq!(
                request.payload_key(),
                payload.key().as_deref(),
                "the payload key is the payload type's key"
            );
        }
        (_, Err(DecodeError::TooLarge { .. })) => {
            panic!("a body within the limit ({max:?}, {size} bytes) is never too large")
        }
        (_, Err(DecodeError::Invalid { .. })) => {
            assert_eq!(request.payload_key(), None, "no key without a payload");
        }
    }

    if let Err(error) = request.payload() {
        dead_letter_of(message, request.attempt(), error);
    }
    keys(request);
}

/// The dead letter a body that did not decode becomes, checked.
fn dead_letter_of(message: &Message, attempts: u32, error: &DecodeError) {
    let expected = match error {
        DecodeError::TooLarge { .. } => ErrorKind::TooLarge,
        DecodeError::Invalid { .. } => ErrorKind::Decode,
    };
    let failed = handler::decode_failure(error);
    assert_eq!(
        failed.kind(),
        expected,
        "too large fails as too_large, anything else as decode"
    );
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    let failure = Failure {
        kind: failed.kind(),
        message: backstop::error::chain(&failed),
        attempts,
        first_failure: at,
        last_failure: at,
    };
    let letter = copy::dead_letter(message, &failure);
    assert_eq!(
        copy::dead_letter_kind(&letter),
        Some(expected),
        "the dead letter carries the decode failure's kind"
    );
    assert_eq!(letter.payload, message.payload, "the original payload");
    let text = letter.header(wire::ERROR).unwrap_or_default();
    assert!(
        text.len() <= wire::MAX_ERROR_LEN,
        "the error is cut to 1 KiB"
    );
    assert!(
        failure.message.starts_with(text),
        "the error header is a prefix of the error"
    );
}

/// Every key source's key of `request`, checked against the raw key.
fn keys<T: Payload>(request: &Request<T>) {
    let message = request.message();
    let id = Some(message.meta.message_id.as_str()).filter(|id| !id.is_empty());
    let sources = [
        (KeySource::Payload, request.payload_key()),
        (KeySource::PayloadOrMessageId, request.payload_key().or(id)),
        (KeySource::MessageId, id),
        (
            KeySource::Header(KEY_HEADER.to_owned()),
            message.header(KEY_HEADER),
        ),
        (KeySource::Header("absent".to_owned()), None),
        (KeySource::None, None),
    ];
    for (source, raw) in sources {
        let key = source.key_of(request);
        assert_eq!(
            key.is_some(),
            raw.is_some(),
            "{source:?} yields a key exactly when it has a raw key"
        );
        if let (Some(raw), Some(key)) = (raw, key) {
            check_key(raw, &key);
        }
    }
}

/// The stored form of `raw`: itself when short, `sha256:<64 hex>` when long.
fn check_key(raw: &str, key: &Key) {
    let stored = key.as_str();
    assert!(
        stored.len() <= MAX_KEY_LEN,
        "a stored key is at most MAX_KEY_LEN bytes, got {}",
        stored.len()
    );
    assert_eq!(
        key,
        &Key::new(raw),
        "the stored form is a function of the key"
    );
    assert_eq!(key.to_string(), stored, "a key displays as its stored form");
    if raw.len() <= MAX_KEY_LEN {
        assert_eq!(stored, raw, "a short key is stored as it is");
    } else {
        let hex = stored.strip_prefix("sha256:");
        assert!(
            hex.is_some_and(|h| h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "a long key is stored as sha256:<64 lowercase hex>, got {stored:?}"
        );
    }
}
