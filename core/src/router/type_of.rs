//! Where a message's type is read: [`TypeSource`], [`DEFAULT_TYPE_SOURCES`], [`message_type`].

use std::fmt;

use crate::message::Message;

/// One place a message's type can be read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeSource {
    /// The text of a header.
    Header(&'static str),
    /// The AMQP `type` property (RabbitMQ; [`AmqpProperties::kind`](crate::inbound::AmqpProperties::kind)).
    AmqpType,
}

impl TypeSource {
    /// The type this source gives `message`, if any (an empty value is none).
    pub fn read(self, message: &Message) -> Option<&str> {
        let value = match self {
            TypeSource::Header(name) => message.header(name),
            TypeSource::AmqpType => message.meta.amqp.as_ref()?.kind.as_deref(),
        };
        value.filter(|v| !v.is_empty())
    }
}

impl fmt::Display for TypeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeSource::Header(name) => write!(f, "header {name:?}"),
            TypeSource::AmqpType => f.write_str("the AMQP type property"),
        }
    }
}

/// Where a [`Router`](super::Router) reads a message's type unless told
/// otherwise ([`RouterBuilder::type_from`](super::RouterBuilder::type_from)),
/// first non-empty value wins:
///
/// 1. the header `type` (what a producer on any broker can set),
/// 2. the AMQP `type` property (RabbitMQ publishers' usual place),
/// 3. the header `ce_type` (a CloudEvents event in Kafka's binary mode,
///    as the CloudEvents Kafka protocol binding and its SDKs write it),
/// 4. the header `ce-type` (the HTTP binding's spelling, which some Kafka
///    producers copy).
pub const DEFAULT_TYPE_SOURCES: [TypeSource; 4] = [
    TypeSource::Header("type"),
    TypeSource::AmqpType,
    TypeSource::Header("ce_type"),
    TypeSource::Header("ce-type"),
];

/// The type of `message` by [`DEFAULT_TYPE_SOURCES`], in that order.
///
/// ```
/// use backstop::Message;
/// use backstop::router::message_type;
///
/// let event = Message::new("{}").with_header("ce_type", "order.placed");
/// assert_eq!(message_type(&event), Some("order.placed"));
/// let both = event.with_header("type", "order.cancelled");
/// assert_eq!(message_type(&both), Some("order.cancelled"), "`type` comes first");
/// assert_eq!(message_type(&Message::new("{}")), None);
/// ```
pub fn message_type(message: &Message) -> Option<&str> {
    DEFAULT_TYPE_SOURCES
        .iter()
        .find_map(|source| source.read(message))
}

/// A user's function from a message to its type.
pub(crate) type TypeFn = dyn for<'m> Fn(&'m Message) -> Option<&'m str> + Send + Sync;
