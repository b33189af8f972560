//! Trace propagation on the in-memory broker (feature `otel`): the consumer
//! span's parent and attributes, forged contexts, and the context retry
//! copies and dead letters carry.

use std::sync::Arc;
use std::time::Duration;

use backstop::memory::MemoryBroker;
use backstop::{
    Context, HandlerError, Message, RetryPolicy, Runner, StackBuilder, handler_fn, wire,
};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::prelude::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Exports every span of this thread to the returned exporter while the guard lives.
fn traced() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

fn consumer_spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    let mut spans: Vec<_> = exporter
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .collect();
    spans.sort_by_key(|s| s.start_time);
    spans
}

/// An attribute's value as text (a `u32` field is recorded as a string).
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn traceparent(span: &SpanData) -> String {
    let cx = &span.span_context;
    format!("00-{}-{}-01", cx.trace_id(), cx.span_id())
}

async fn drain(broker: &MemoryBroker, retry: RetryPolicy, fail: bool) {
    let handler = handler_fn(move |_text: String, _ctx: Context| async move {
        if fail {
            Err(HandlerError::transient("down").retry_after(Duration::from_secs(30)))
        } else {
            Ok(())
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .retry(retry)
        .retry_sink(Arc::new(broker.retry_sink()))
        .build(handler);
    Runner::new(broker.consume("orders", 4).until_drained(), stack)
        .run()
        .await
        .expect("the runner drains the queue");
}

#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_is_a_child_of_the_carried_context_with_messaging_attributes() {
    let (exporter, _guard) = traced();
    let broker = MemoryBroker::new();
    let message = Message::new("\"hi\"")
        .with_message_id("m-1")
        .with_header(wire::TRACEPARENT, format!("00-{TRACE}-{PARENT}-01"))
        .with_header("tracestate", "vendor=1");
    broker.publish_now("orders", message).unwrap();
    drain(&broker, RetryPolicy::retries(0), false).await;

    let spans = consumer_spans(&exporter);
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "process orders");
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT).unwrap());
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().header(), "vendor=1");
    for (key, value) in [
        ("messaging.system", "in-memory"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "orders"),
        ("messaging.message.id", "m-1"),
        ("attempt", "1"),
        ("outcome", "handled"),
    ] {
        assert_eq!(attribute(span, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(attribute(span, "messaging.kafka.offset"), None);
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_or_forged_traceparent_starts_a_fresh_trace() {
    let (exporter, _guard) = traced();
    let broker = MemoryBroker::new();
    let forged = [
        "garbage".to_owned(),
        format!("00-{}-{PARENT}-01", "0".repeat(32)),
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("00-{TRACE}-{PARENT}"),
        format!("00-{TRACE}-{PARENT}-01-{}", "x".repeat(10_000)),
        "00-é-é-01".to_owned(),
    ];
    for (i, value) in forged.iter().enumerate() {
        let message = Message::new("\"hi\"")
            .with_message_id(format!("m-{i}"))
            .with_header(wire::TRACEPARENT, value.clone());
        broker.publish_now("orders", message).unwrap();
    }
    drain(&broker, RetryPolicy::retries(0), false).await;

    assert_eq!(broker.stats("orders").acked, forged.len() as u64);
    assert_eq!(broker.stats("orders.dlq").published, 0);
    let spans = consumer_spans(&exporter);
    assert_eq!(spans.len(), forged.len());
    let mut traces: Vec<_> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    for span in &spans {
        assert!(span.span_context.is_valid());
        assert_eq!(span.parent_span_id, SpanId::INVALID, "a root");
        assert_ne!(
            span.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap()
        );
    }
    traces.dedup();
    assert_eq!(traces.len(), forged.len(), "one fresh trace each");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_copies_and_dead_letters_carry_the_span_they_were_made_in() {
    let (exporter, _guard) = traced();
    let broker = MemoryBroker::new();
    let stale = format!("00-{TRACE}-{PARENT}-01");
    broker
        .publish_now(
            "orders",
            Message::new("\"hi\"").with_header(wire::TRACEPARENT, stale.clone()),
        )
        .unwrap();
    drain(&broker, RetryPolicy::retries(1), true).await;

    let spans = consumer_spans(&exporter);
    assert_eq!(spans.len(), 2, "the original and its retry copy");
    let (first, second) = (&spans[0], &spans[1]);
    assert_eq!(first.parent_span_id, SpanId::from_hex(PARENT).unwrap());
    assert_eq!(
        second.parent_span_id,
        first.span_context.span_id(),
        "the copy's span is a child of the span that made the copy"
    );
    assert_eq!(attribute(second, "attempt").as_deref(), Some("2"));
    let trace = TraceId::from_hex(TRACE).unwrap();
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
    let letters = broker.peek("orders.dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header(wire::TRACEPARENT),
        Some(traceparent(second).as_str()),
        "the letter carries the last consumer span, not the stale context"
    );
    assert_eq!(letters[0].headers.get_all(wire::TRACEPARENT).count(), 1);
}
