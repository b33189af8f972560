use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::message::Message;
use crate::request::Request;

/// Keys longer than this many bytes are stored as their SHA-256.
pub const MAX_KEY_LEN: usize = 200;

/// An idempotency key as stored: the raw key, or `sha256:<hex>` when it is long.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The stored form of `raw`.
    pub fn new(raw: &str) -> Self {
        if raw.len() <= MAX_KEY_LEN {
            Key(Arc::from(raw))
        } else {
            Key(Arc::from(format!(
                "sha256:{}",
                hex::encode(Sha256::digest(raw.as_bytes()))
            )))
        }
    }

    /// The stored form as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a message's idempotency key comes from.
///
/// ```
/// use backstop::request::Request;
/// use backstop::{KeySource, Message};
/// use tokio_util::sync::CancellationToken;
///
/// let message = Message::new("\"pay\"")
///     .with_message_id("m-7")
///     .with_header("x-order-id", "order-42");
/// let request = Request::<String>::decode(message, CancellationToken::new(), None);
///
/// let by_header = KeySource::Header("x-order-id".into()).key_of(&request);
/// assert_eq!(by_header.expect("the header is set").as_str(), "order-42");
/// assert_eq!(KeySource::MessageId.key_of(&request).expect("ids are set").as_str(), "m-7");
/// // A `String` payload names no key field: no deduplication for it.
/// assert!(KeySource::Payload.key_of(&request).is_none());
/// assert!(KeySource::None.key_of(&request).is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySource {
    /// The payload type's key field; a payload without one skips deduplication.
    #[default]
    Payload,
    /// The payload's key, else the message id.
    PayloadOrMessageId,
    /// The message id (`x-backstop-message-id`).
    MessageId,
    /// A header's value; a message without it skips deduplication.
    Header(String),
    /// No deduplication.
    None,
}

impl KeySource {
    /// The key of `request`, if this source yields one.
    pub fn key_of<T>(&self, request: &Request<T>) -> Option<Key> {
        self.raw_of(request).map(Key::new)
    }

    /// The key of `request` as the message has it, before it is stored
    /// (hashed when long, put in its keyspace).
    pub(crate) fn raw_of<'r, T>(&self, request: &'r Request<T>) -> Option<&'r str> {
        let message: &Message = request.message();
        let id = || Some(message.meta.message_id.as_str()).filter(|s| !s.is_empty());
        match self {
            KeySource::Payload => request.payload_key(),
            KeySource::PayloadOrMessageId => request.payload_key().or_else(id),
            KeySource::MessageId => id(),
            KeySource::Header(name) => message.header(name),
            KeySource::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_hashed_short_ones_kept() {
        assert_eq!(Key::new("order-1").as_str(), "order-1");
        let long = "k".repeat(300);
        let k = Key::new(&long);
        assert!(k.as_str().starts_with("sha256:"));
        assert_eq!(k.as_str().len(), 7 + 64);
        assert_eq!(k, Key::new(&long));
        assert_ne!(k, Key::new(&"k".repeat(301)));
    }

    #[test]
    fn sources_pick_their_key() {
        let r = crate::testing::request("x");
        assert_eq!(KeySource::MessageId.key_of(&r), Some(Key::new("id-x")));
        assert_eq!(
            KeySource::Payload.key_of(&r),
            None,
            "String has no key field"
        );
        assert_eq!(
            KeySource::PayloadOrMessageId.key_of(&r),
            Some(Key::new("id-x"))
        );
        assert_eq!(KeySource::Header("h".into()).key_of(&r), None);
        assert_eq!(KeySource::None.key_of(&r), None);
    }
}
