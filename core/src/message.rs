//! The broker-neutral envelope: [`Message`] and its [`Meta`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

use crate::wire;

/// Message headers: UTF-8 names and values, the same on every broker.
pub type Headers = BTreeMap<String, String>;

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
    pub source: String,
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
    /// The broker or producer timestamp, if any.
    pub timestamp: Option<SystemTime>,
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
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
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
        headers.insert(wire::MESSAGE_ID.to_owned(), self.id_for_publish());
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
        assert_eq!(h.get(wire::MESSAGE_ID).map(String::as_str), Some("m-1"));
        assert_eq!(h.get("a").map(String::as_str), Some("b"));
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
