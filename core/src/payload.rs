//! [`Payload`]: how a message body becomes a typed value and its idempotency key.

use bytes::Bytes;

/// A payload that could not be decoded. Dead-lettered with kind `decode`
/// (or `too_large`), never retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a valid value of the payload type.
    #[error("payload does not decode as {type_name}: {reason}")]
    Invalid {
        /// The payload type's name.
        type_name: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The body is larger than the configured maximum.
    #[error("payload of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// A message body type: decoded once, before any layer runs.
///
/// Decoding must depend only on the bytes: a redelivered message is
/// decoded again, and so is a message for each retry of its handler (the
/// first attempt gets the decoded payload itself, not a copy; see
/// [`shared_copy`](Payload::shared_copy)).
///
/// `#[derive(Payload)]` implements it for a serde type (JSON), with the key
/// taken from the field marked `#[payload(key)]`. By hand:
///
/// ```
/// use backstop::{Payload};
/// use backstop::payload::DecodeError;
///
/// #[derive(Clone, serde::Deserialize)]
/// struct OrderPlaced { order_id: String, amount: i64 }
///
/// impl Payload for OrderPlaced {
///     fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
///         backstop::payload::json(bytes)
///     }
///     fn key(&self) -> Option<String> {
///         Some(self.order_id.clone())
///     }
/// }
///
/// let order = OrderPlaced::decode(br#"{"order_id":"o-1","amount":5}"#).unwrap();
/// assert_eq!(order.key().as_deref(), Some("o-1"));
/// assert!(OrderPlaced::decode(b"not json").is_err());
/// ```
#[diagnostic::on_unimplemented(
    note = "derive it with `#[derive(backstop::Payload)]` on a serde type, or implement `decode` and `key` by hand"
)]
pub trait Payload: Clone + Send + Sync + Sized + 'static {
    /// Decodes a body.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;

    /// Decodes a body held in a shared buffer: what the stack calls. The
    /// default decodes the bytes ([`decode`](Payload::decode)); a payload
    /// that can share the buffer instead of copying it overrides this
    /// (`Bytes` does: its payload is the message's own buffer).
    ///
    /// ```
    /// use backstop::Payload;
    /// use bytes::Bytes;
    ///
    /// let body = Bytes::from_static(b"raw body");
    /// let payload = <Bytes as Payload>::decode_shared(&body).unwrap();
    /// assert_eq!(payload.as_ptr(), body.as_ptr(), "shared, not copied");
    /// ```
    fn decode_shared(bytes: &Bytes) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }

    /// A copy for one attempt of the stack's handler, if this type has one
    /// that shares what it holds (a buffer, a cache of decoded values) and
    /// is worth keeping across attempts. `None`, the default: the first
    /// attempt gets the payload itself, and a retry decodes the bytes
    /// again. [`Routed`](crate::router::Routed) returns a copy that shares
    /// its cache, so a retried message is decoded as its route's type once.
    ///
    /// ```
    /// use backstop::Payload;
    /// use backstop::router::Routed;
    ///
    /// let routed = Routed::decode(b"{}").unwrap();
    /// assert!(routed.shared_copy().is_some());
    /// assert_eq!(String::decode(b"text").unwrap().shared_copy(), None);
    /// ```
    fn shared_copy(&self) -> Option<Self> {
        None
    }

    /// The idempotency key, if this payload carries one.
    fn key(&self) -> Option<String> {
        None
    }

    /// Routing default: the queue or topic this payload is consumed from.
    fn default_source() -> Option<&'static str> {
        None
    }

    /// Routing default: the dead-letter queue or topic.
    fn default_dlq() -> Option<&'static str> {
        None
    }
}

/// Decodes JSON into `T`, with a [`DecodeError`] that names the type.
pub fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid {
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

impl Payload for serde_json::Value {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        json(bytes)
    }
}

impl Payload for Bytes {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn decode_shared(bytes: &Bytes) -> Result<Self, DecodeError> {
        Ok(bytes.clone())
    }
}

impl Payload for String {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError::Invalid {
            type_name: "String",
            reason: e.to_string(),
        })
    }
}
