//! OpenTelemetry trace propagation through message headers (feature `otel`).
//!
//! One trace follows a message through retries, the DLQ and a redrive:
//!
//! - **In**: the per-message span (`backstop.message`, see
//!   [`metrics`](crate::metrics)) becomes a consumer span whose parent is
//!   the W3C trace context in the message's `traceparent` / `tracestate`
//!   headers ([`extract`]), with the messaging semantic-convention
//!   attributes: `messaging.system` (`rabbitmq`, `kafka`, `in-memory`),
//!   `messaging.operation.type` = `process`, `messaging.destination.name`,
//!   `messaging.message.id`, `messaging.kafka.offset`,
//!   `messaging.destination.partition.id` and `messaging.consumer.group.name`
//!   on Kafka, `messaging.rabbitmq.message.delivery_tag` on RabbitMQ, and the
//!   `attempt`. A missing, malformed or forged `traceparent` (or one that
//!   repeats) is ignored: the span starts a fresh trace; never an error.
//! - **Out**: retry copies ([`copy::retry`](crate::copy::retry)) and dead
//!   letters ([`copy::dead_letter`](crate::copy::dead_letter)) carry the
//!   context of the span they are made in, the consumer span, replacing the
//!   `traceparent` they arrived with ([`inject_current`]). The CLI's redrive
//!   copies and `backstop-spool`'s `ReliablePublisher` do the same through
//!   their own `otel` features. Postponed copies (outages, busy keys) are
//!   made outside the consumer span and keep the context they arrived with.
//!
//! Without a `tracing_opentelemetry` layer the spans have no OpenTelemetry
//! context: nothing is injected and headers travel unchanged.
//!
//! # Setting up
//!
//! backstop compiles no exporter. Install a tracer provider with the
//! exporter of your choice (OTLP, stdout, …) and the `tracing_opentelemetry`
//! layer; here the SDK's in-memory exporter shows what is recorded:
//!
//! ```
//! use std::sync::Arc;
//! use backstop::{handler_fn, memory::MemoryBroker, Context, HandlerError, Message, Runner, StackBuilder};
//! use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exporter = InMemorySpanExporter::default(); // yours: an OTLP exporter
//! let provider = SdkTracerProvider::builder()
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("worker")));
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! let broker = MemoryBroker::new();
//! let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! broker.publish_now("greetings", Message::new("\"hi\"").with_header("traceparent", traceparent));
//!
//! let greet = handler_fn(|_text: String, _ctx: Context| async { Ok::<_, HandlerError>(()) });
//! let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink())).build(greet);
//! Runner::new(broker.consume("greetings", 1).until_drained(), stack).run().await?;
//!
//! let spans = exporter.get_finished_spans()?;
//! let consumed = spans.iter().find(|s| s.name == "process greetings").expect("a consumer span");
//! assert_eq!(consumed.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(consumed.parent_span_id.to_string(), "00f067aa0ba902b7");
//! # Ok(())
//! # }
//! ```
//!
//! The propagator is always W3C TraceContext, whatever global propagator
//! is installed: the headers are `traceparent` and `tracestate`.

mod carrier;
mod span;

pub use self::carrier::{HeaderExtractor, HeaderInjector};
pub(crate) use self::span::consumer_span;
pub use self::span::{send_span, system};

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::Headers;
use crate::wire;

/// `tracestate`: vendor trace data beside [`wire::TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// The trace context `headers` carry: a remote parent from a valid
/// `traceparent` (and its `tracestate`), else an empty context (a fresh
/// root). Malformed or forged values are ignored, never an error.
pub fn extract(headers: &Headers) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx`'s span context into `headers` as `traceparent` (and
/// `tracestate` when not empty), replacing what they had; returns true.
/// A context without a valid span changes nothing and returns false.
pub fn inject(cx: &Context, headers: &mut Headers) -> bool {
    if !cx.span().span_context().is_valid() {
        return false;
    }
    headers.remove(wire::TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    if headers.get(TRACESTATE).is_some_and(str::is_empty) {
        headers.remove(TRACESTATE);
    }
    true
}

/// [`inject`]s the context of `span`; see [`inject`].
pub fn inject_span(span: &tracing::Span, headers: &mut Headers) -> bool {
    inject(&span.context(), headers)
}

/// [`inject`]s the context of the current `tracing` span; see [`inject`].
pub fn inject_current(headers: &mut Headers) -> bool {
    inject_span(&tracing::Span::current(), headers)
}

/// Makes `span` a child of the context `headers` carry, or the root of a
/// fresh trace when they carry none. Call it before `span` is entered.
/// Without a `tracing_opentelemetry` layer (or with `span` disabled) this
/// does nothing.
pub fn adopt(span: &tracing::Span, headers: &Headers) {
    // The errors say there is no layer, the span is off or already
    // started: nothing to link, and never a reason to fail a message.
    let _ = span.set_parent(extract(headers));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;
    use crate::headers::{AmqpValue, HeaderValue};

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_traceparent(value: impl Into<HeaderValue>) -> Headers {
        let mut headers = Headers::new();
        headers.insert_value(wire::TRACEPARENT, value);
        headers
    }

    fn remote(headers: &Headers) -> SpanContext {
        extract(headers).span().span_context().clone()
    }

    #[test]
    fn a_valid_traceparent_is_the_remote_parent() {
        let mut headers = with_traceparent(VALID);
        headers.insert(TRACESTATE, "vendor=1");
        let cx = remote(&headers);
        assert!(cx.is_valid() && cx.is_remote());
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(cx.trace_state().header(), "vendor=1");
    }

    #[test]
    fn malformed_or_forged_traceparents_are_ignored() {
        let forged: Vec<HeaderValue> = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736é-00f067aa0ba902-01",
            "-------",
        ]
        .into_iter()
        .map(HeaderValue::from)
        .chain([
            HeaderValue::Null,
            HeaderValue::Bytes(vec![0xff; 55].into()),
            HeaderValue::Amqp(AmqpValue::LongInt(1)),
            HeaderValue::Text("x".repeat(100_000)),
        ])
        .collect();
        for value in forged {
            let headers = with_traceparent(value.clone());
            assert!(!remote(&headers).is_valid(), "{value:?}");
        }
        let mut twice = with_traceparent(VALID);
        twice.append(
            wire::TRACEPARENT,
            "00-11111111111111111111111111111111-2222222222222222-01",
        );
        assert!(!remote(&twice).is_valid(), "a repeated traceparent is none");
    }

    #[test]
    fn inject_replaces_a_stale_context_and_drops_an_empty_tracestate() {
        let mut headers =
            with_traceparent("00-11111111111111111111111111111111-2222222222222222-01");
        headers.insert(TRACESTATE, "stale=1");
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(context);
        assert!(inject(&cx, &mut headers));
        assert_eq!(headers.get(wire::TRACEPARENT), Some(VALID));
        assert_eq!(headers.get(TRACESTATE), None);
        assert_eq!(headers.get_all(wire::TRACEPARENT).count(), 1);
    }

    #[test]
    fn an_empty_context_changes_nothing() {
        let mut headers = with_traceparent(VALID);
        assert!(!inject(&Context::new(), &mut headers));
        assert!(!inject_current(&mut headers), "no span, no layer");
        assert_eq!(headers.get(wire::TRACEPARENT), Some(VALID));
    }
}
