//! The broker-neutral envelope: [`Message`] and its [`Meta`].

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::wire;

pub use crate::headers::Headers;

/// A message as backstop sees it, whatever broker it came from.
///
/// The payload is [`Bytes`], so cloning a message (the retry layer does it
/// before every attempt) does not copy the body.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body, exactly as the broker delivered it.
    pub payload: Bytes,
    /// Application and backstop headers (see [`wire`]).
    pub headers: Headers,
    /// The partitioning key (the Kafka record key), if any.
    pub key: Option<Bytes>,
    /// Where the message came from and how often it was tried.
    pub meta: Meta,
}

/// Delivery metadata: where a message came from and how often it was tried.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The queue or topic the message was consumed from.
    pub source: Arc<str>,
    /// The Kafka partition, if any.
    pub partition: Option<i32>,
    /// The Kafka offset, if any.
    pub offset: Option<i64>,
    /// The AMQP delivery tag (or the in-memory broker's tag), if any.
    pub delivery_tag: Option<u64>,
    /// True when the broker says it delivered this message before.
    pub redelivered: bool,
    /// The 1-based attempt number this delivery is for (from [`wire::ATTEMPT`]).
    pub attempt: u32,
    /// The message id, carried unchanged on every copy (see [`wire::MESSAGE_ID`]).
    pub message_id: String,
    /// The broker or producer timestamp, if any (`None` when the broker's
    /// value is out of range for a [`SystemTime`]).
    pub timestamp: Option<SystemTime>,
    /// The source this message belongs to when it was consumed from one of
    /// backstop's own retry topics (Kafka): set by the adapter from its own
    /// table of the retry topics it subscribed to, never from a header.
    /// `None` when the message was consumed from its source itself.
    pub retry_of: Option<String>,
    /// The Kafka consumer group that consumed the message, set by the
    /// adapter from its own configuration (never from a header); `None` on
    /// brokers without groups. Part of the message's idempotency keyspace
    /// ([`Keyspace`](crate::idempotency::Keyspace)).
    pub group: Option<Arc<str>>,
    /// Where the message id came from (see [`IdSource`]).
    pub id_source: IdSource,
    /// The AMQP properties the message arrived with (RabbitMQ), carried to
    /// every retry copy, dead letter and redrive, so content type and
    /// encoding, correlation id, reply-to, type, app id, priority and
    /// timestamp survive each hop.
    pub amqp: Option<crate::inbound::AmqpProperties>,
    /// Why the adapter could not convert the broker's delivery, if it could
    /// not: such a message fails as `decode` without its body being decoded
    /// (see [`inbound::guarded`](crate::inbound::guarded)).
    pub conversion_error: Option<String>,
}

/// Where a message's id came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdSource {
    /// The producer set it (an AMQP `message_id` property or an
    /// `x-backstop-message-id` header), or the application did.
    #[default]
    Producer,
    /// The broker position: Kafka `<topic>/<partition>/<offset>`.
    Position,
    /// A digest of the body and properties of an id-less RabbitMQ message
    /// (see [`inbound::amqp_digest_id`](crate::inbound::amqp_digest_id)).
    Digest,
}

impl Meta {
    /// The queue or topic this message belongs to: [`Meta::retry_of`] for a
    /// copy consumed from a retry topic, else [`Meta::source`]. Dead letters
    /// and retry copies are routed by it; never by a header.
    pub fn origin(&self) -> &str {
        self.retry_of.as_deref().unwrap_or(&self.source)
    }
}

impl Message {
    /// A message with this payload, a fresh message id and attempt 1.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            headers: Headers::new(),
            key: None,
            meta: Meta {
                attempt: 1,
                message_id: new_message_id(),
                ..Meta::default()
            },
        }
    }

    /// Sets the message id.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.meta.message_id = id.into();
        self
    }

    /// Sets the partitioning key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The text of a header, if present and text (see [`Headers::get`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// How many times this copy was redriven from a DLQ (0 for an original).
    pub fn replayed(&self) -> u32 {
        self.header(wire::REPLAYED)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The message id a publisher writes: the meta's, else the header's, else a new one.
    pub fn id_for_publish(&self) -> String {
        if !self.meta.message_id.is_empty() {
            self.meta.message_id.clone()
        } else if let Some(id) = self.header(wire::MESSAGE_ID) {
            id.to_owned()
        } else {
            new_message_id()
        }
    }

    /// The headers a publisher writes: these headers plus [`wire::MESSAGE_ID`].
    pub fn headers_for_publish(&self) -> Headers {
        let mut headers = self.headers.clone();
        headers.insert(wire::MESSAGE_ID, self.id_for_publish());
        headers
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("key", &self.key)
            .field("meta", &self.meta)
            .finish()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("message_id", &self.message_id)
            .field("source", &self.source)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("attempt", &self.attempt)
            .field("retry_of", &self.retry_of)
            .field("group", &self.group)
            .field("id_source", &self.id_source)
            .field("conversion_error", &self.conversion_error)
            .finish_non_exhaustive()
    }
}

/// A new random message id (128 bits, hex).
pub fn new_message_id() -> String {
    let id: u128 = rand::random();
    format!("{id:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_headers_carry_the_message_id() {
        let m = Message::new("x")
            .with_message_id("m-1")
            .with_header("a", "b");
        let h = m.headers_for_publish();
        assert_eq!(h.get(wire::MESSAGE_ID), Some("m-1"));
        assert_eq!(h.get("a"), Some("b"));
    }

    #[test]
    fn replayed_defaults_to_zero_and_reads_the_header() {
        assert_eq!(Message::new("x").replayed(), 0);
        assert_eq!(
            Message::new("x")
                .with_header(wire::REPLAYED, "3")
                .replayed(),
            3
        );
    }

    #[test]
    fn new_ids_differ() {
        assert_ne!(new_message_id(), new_message_id());
    }
}
