//! The spans backstop opens with OpenTelemetry's messaging semantic
//! conventions: the consumer span of each message and the producer span of
//! a send.

use tracing::field::Empty;

use crate::message::{Message, Meta};
use crate::request::Request;

/// `messaging.system` for a consumed message: `kafka` when it has a
/// partition, `rabbitmq` when it has AMQP properties, else `in-memory`.
pub fn system(meta: &Meta) -> &'static str {
    if meta.partition.is_some() {
        "kafka"
    } else if meta.amqp.is_some() {
        "rabbitmq"
    } else {
        "in-memory"
    }
}

/// The per-message span with the feature on: the fields of the plain one
/// plus the consumer attributes, a child of the message's trace context
/// (see the [module docs](super)).
pub(crate) fn consumer_span<T>(request: &Request<T>) -> tracing::Span {
    let message = request.message();
    let meta = &message.meta;
    let system = system(meta);
    let name = format!("process {}", meta.source);
    let span = tracing::info_span!(
        "backstop.message",
        message_id = %meta.message_id,
        source = %meta.source,
        attempt = request.attempt(),
        outcome = Empty,
        "otel.name" = name.as_str(),
        "otel.kind" = "consumer",
        "messaging.system" = system,
        "messaging.operation.type" = "process",
        "messaging.destination.name" = &*meta.source,
        "messaging.message.id" = meta.message_id.as_str(),
        "messaging.kafka.offset" = meta.offset,
        "messaging.destination.partition.id" = Empty,
        "messaging.consumer.group.name" = meta.group.as_deref(),
        "messaging.rabbitmq.message.delivery_tag" = Empty,
    );
    if let Some(partition) = meta.partition {
        span.record(
            "messaging.destination.partition.id",
            partition.to_string().as_str(),
        );
    }
    if system == "rabbitmq" {
        span.record("messaging.rabbitmq.message.delivery_tag", meta.delivery_tag);
    }
    super::adopt(&span, &message.headers);
    span
}

/// A producer span for sending `message` to `destination`
/// (`send <destination>`, `messaging.operation.type` = `send`), a child of
/// the current span. Inject its context
/// ([`inject_span`](super::inject_span)) into the message before sending
/// it, and send inside the span.
///
/// ```
/// use backstop::{Message, otel};
///
/// let mut message = Message::new("{}");
/// let span = otel::send_span("orders", &message);
/// // Without a `tracing_opentelemetry` layer there is no context to inject.
/// assert!(!otel::inject_span(&span, &mut message.headers));
/// ```
pub fn send_span(destination: &str, message: &Message) -> tracing::Span {
    let name = format!("send {destination}");
    tracing::info_span!(
        "backstop.send",
        "otel.name" = name.as_str(),
        "otel.kind" = "producer",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = destination,
        "messaging.message.id" = message.meta.message_id.as_str(),
    )
}
