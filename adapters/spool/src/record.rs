//! [`SpooledRecord`]: one message waiting in the spool, and the ordering unit
//! it belongs to.

use std::time::SystemTime;

use backstop::Message;
use bytes::Bytes;

/// A message waiting in the spool for the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledRecord {
    /// Its place in the spool: increasing, never reused.
    pub seq: u64,
    /// Where it goes: the queue or topic; `None` for a dead letter routed by
    /// its sink's default (from its origin).
    pub destination: Option<String>,
    /// The message: payload, headers, key, message id (and, for dead
    /// letters, the source it was consumed from).
    pub message: Message,
    /// When it was spooled.
    pub spooled_at: SystemTime,
}

/// A spooled message the broker refused for good (too large, a destination
/// that does not exist, a message it cannot take) or whose row could not be
/// read back, moved out of the way of its key's later messages. The payload
/// and headers stay in the spool file for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRecord {
    /// Its place in the spool when it was spooled.
    pub seq: u64,
    /// Where it was going (`None`: a dead letter routed by its origin).
    pub destination: Option<String>,
    /// The source it was consumed from (dead letters) or published as.
    pub source: String,
    /// Its message id.
    pub message_id: String,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its size as counted against the spool's bound.
    pub size: u64,
    /// When it was spooled.
    pub spooled_at: SystemTime,
    /// Why it was set aside: the failure's label (`too_large`, `unroutable`,
    /// `missing_destination`, `invalid`, `unsupported`, …) or `unreadable`.
    pub reason: String,
    /// The broker's or the decoder's error.
    pub error: String,
    /// When it was set aside.
    pub refused_at: SystemTime,
}

impl SpooledRecord {
    /// The ordering unit of this record.
    pub(crate) fn unit(&self) -> Unit {
        Unit::of(self.destination.as_deref(), &self.message)
    }
}

/// The unit within which the spool keeps order: destination (or, for a dead
/// letter routed by default, its source) and key. Messages without a key
/// are one unit per destination, so they keep their order too (a RabbitMQ
/// queue's order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Unit {
    destination: Option<String>,
    source: String,
    key: Option<Bytes>,
}

impl Unit {
    pub(crate) fn of(destination: Option<&str>, message: &Message) -> Unit {
        Unit::new(
            destination.map(str::to_owned),
            &message.meta.source,
            message.key.clone(),
        )
    }

    pub(crate) fn new(destination: Option<String>, source: &str, key: Option<Bytes>) -> Unit {
        Unit {
            // Only a default-routed dead letter's route depends on its source.
            source: if destination.is_none() {
                source.to_owned()
            } else {
                String::new()
            },
            destination,
            key,
        }
    }
}

/// The size a record counts for against the byte bound.
pub(crate) fn size_of(destination: Option<&str>, message: &Message) -> u64 {
    let headers = message.headers.wire_len();
    let total = destination.map_or(0, str::len)
        + message.meta.source.len()
        + message.meta.message_id.len()
        + message.key.as_ref().map_or(0, Bytes::len)
        + message.payload.len()
        + headers;
    u64::try_from(total).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_by_destination_and_key() {
        let a = Message::new("x").with_key("k1");
        let b = Message::new("y").with_key("k1");
        let c = Message::new("z").with_key("k2");
        assert_eq!(Unit::of(Some("t"), &a), Unit::of(Some("t"), &b));
        assert_ne!(Unit::of(Some("t"), &a), Unit::of(Some("t"), &c));
        assert_ne!(Unit::of(Some("t"), &a), Unit::of(Some("u"), &a));
        let mut from_orders = Message::new("x");
        from_orders.meta.source = "orders".into();
        let mut from_billing = from_orders.clone();
        from_billing.meta.source = "billing".into();
        assert_ne!(Unit::of(None, &from_orders), Unit::of(None, &from_billing));
        assert_eq!(
            Unit::of(Some("t"), &from_orders),
            Unit::of(Some("t"), &from_billing)
        );
    }
}
