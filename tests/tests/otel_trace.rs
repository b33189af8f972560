//! One trace follows a message through a real broker (feature `otel`):
//! publish (a producer span, injected by the `ReliablePublisher`) ⟶ consume
//! ⟶ transient failure ⟶ retry copy through the broker's delay path ⟶ dead
//! letter ⟶ redrive (the DLQ library) ⟶ consumed again. Every span has the
//! producer's trace id, and each consumer span is a child of the context
//! carried by the message it consumed.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backstop::{
    CancellationToken, Context, HandlerError, Message, RetryPolicy, Runner, StackBuilder,
    handler_fn, wire,
};
use backstop_cli::dlq::{Dlq, Filter, ReplayOptions};
use backstop_kafka::{Kafka, RetryTiers, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_spool::{ReliablePublisher, Sent, SpoolConfig};
use backstop_tests::unique;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

/// The process-wide exporter behind the global subscriber (spans of every
/// test; each test reads its own trace).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-trace-test")))
            .init();
        exporter
    })
}

/// One run of the handler: the attempt, the redrive count and the
/// `traceparent` of the message it consumed.
#[derive(Debug, Clone)]
struct Run {
    attempt: u32,
    replayed: u32,
    carried: String,
}

/// A handler that fails transiently (past the in-process limit, so the
/// retry goes through the broker) until the message was redriven.
fn handler(runs: Arc<Mutex<Vec<Run>>>) -> impl backstop::Handle<String> {
    handler_fn(move |_body: String, ctx: Context| {
        let runs = Arc::clone(&runs);
        async move {
            let replayed = ctx
                .headers()
                .get(wire::REPLAYED)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            runs.lock().unwrap().push(Run {
                attempt: ctx.attempt(),
                replayed,
                carried: ctx
                    .headers()
                    .get(wire::TRACEPARENT)
                    .unwrap_or_default()
                    .to_owned(),
            });
            if replayed == 0 {
                Err(HandlerError::transient("downstream busy")
                    .retry_after(Duration::from_millis(700)))
            } else {
                Ok(())
            }
        }
    })
}

fn policy() -> RetryPolicy {
    RetryPolicy::retries(1).in_process_limit(Duration::from_millis(100))
}

/// The span id a `traceparent` names.
fn span_id_of(traceparent: &str) -> SpanId {
    traceparent
        .split('-')
        .nth(2)
        .and_then(|id| SpanId::from_hex(id).ok())
        .unwrap_or(SpanId::INVALID)
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// Every exported span about `message_id` (by `messaging.message.id`).
fn spans_of(message_id: &str) -> Vec<SpanData> {
    let mut spans: Vec<_> = exporter()
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| attribute(s, "messaging.message.id").as_deref() == Some(message_id))
        .collect();
    spans.sort_by_key(|s| s.start_time);
    spans
}

/// Waits until `done` holds, at most `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// The trace's shape: one trace id; the send span a child of the producer
/// span; each consumer span a child of the context its message carried;
/// the redrive span a child of the last failed consumer span, and the
/// redriven message carrying the redrive span.
fn assert_one_trace(producer: (TraceId, SpanId), message_id: &str, runs: &[Run], system: &str) {
    let spans = spans_of(message_id);
    let (trace, producer_span) = producer;
    for span in &spans {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} is in another trace",
            span.name
        );
    }
    let sends: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Producer && s.name.starts_with("send "))
        .collect();
    assert_eq!(sends.len(), 1, "one publish: {spans:#?}");
    assert_eq!(sends[0].parent_span_id, producer_span);
    let consumed: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .collect();
    let redrives: Vec<_> = spans.iter().filter(|s| s.name == "redrive").collect();
    assert_eq!(consumed.len(), 3, "attempt 1, its retry copy, the redrive");
    assert_eq!(redrives.len(), 1);
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.replayed))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 0), (1, 1)]
    );
    for (span, run) in consumed.iter().zip(runs) {
        assert_eq!(
            span.parent_span_id,
            span_id_of(&run.carried),
            "a consumer span is a child of the context its message carried"
        );
        assert_eq!(attribute(span, "messaging.system").as_deref(), Some(system));
        assert_eq!(
            attribute(span, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(attribute(span, "attempt"), Some(run.attempt.to_string()));
    }
    let (first, second, third) = (consumed[0], consumed[1], consumed[2]);
    assert_eq!(first.parent_span_id, sends[0].span_context.span_id());
    assert_eq!(second.parent_span_id, first.span_context.span_id());
    assert_eq!(redrives[0].parent_span_id, second.span_context.span_id());
    assert_eq!(third.parent_span_id, redrives[0].span_context.span_id());
}

/// Opens a producer span and returns it with its trace and span ids.
fn producer_span() -> (tracing::Span, (TraceId, SpanId)) {
    let span = tracing::info_span!("test.produce");
    let cx = span.context();
    let ids = (
        cx.span().span_context().trace_id(),
        cx.span().span_context().span_id(),
    );
    assert!(
        cx.span().span_context().is_valid(),
        "the OpenTelemetry layer is installed"
    );
    (span, ids)
}

/// Publishes one message to `destination` through a `ReliablePublisher`
/// inside a producer span; returns its id and the producer span's ids.
async fn publish_traced(
    publisher: impl backstop::publish::Publisher,
    destination: &str,
) -> (String, (TraceId, SpanId)) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let publisher =
        ReliablePublisher::open(publisher, SpoolConfig::new(dir.path().join("otel.spool")))
            .await
            .expect("open the spool");
    let message_id = format!("m-{destination}");
    let (span, producer) = producer_span();
    let message = Message::new("\"order\"").with_message_id(&message_id);
    let sent = tracing::Instrument::instrument(publisher.publish(destination, &message), span)
        .await
        .expect("published");
    assert_eq!(sent, Sent::Confirmed);
    publisher.close().await.expect("close the spool");
    (message_id, producer)
}

/// Runs `stack` over `source` until `runs` holds `n` runs (at most
/// `limit`) once `redrive` redrove the dead letter; returns the runs.
async fn consume_and_redrive<S, F>(
    source: S,
    stack: backstop::Stack,
    runs: &Arc<Mutex<Vec<Run>>>,
    redrive: impl FnOnce() -> F,
) -> Vec<Run>
where
    S: backstop::runner::Source + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(4)
            .shutdown_deadline(Duration::from_secs(10))
            .with_shutdown(shutdown.clone())
            .run(),
    );
    redrive().await;
    let done = eventually(Duration::from_secs(30), || runs.lock().unwrap().len() >= 3).await;
    shutdown.cancel();
    let summary = runner.await.expect("the runner task").expect("the runner");
    let runs = runs.lock().unwrap().clone();
    assert!(done, "the redriven copy was consumed: {runs:?}");
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (1, 1),
        "{summary}"
    );
    runs
}

/// Redrives every letter of `dlq` until one was redriven (the letter may
/// not be there yet), at most `limit`.
async fn redrive_one(dlq: &Dlq, limit: Duration) {
    let options = ReplayOptions {
        to: None,
        dry_run: false,
        rate: None,
        max_replays: 3,
        watch: Default::default(),
    };
    let until = tokio::time::Instant::now() + limit;
    loop {
        let report = dlq
            .replay(&Filter::default(), &options)
            .await
            .expect("redrive");
        if report.replayed_count == 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no letter to redrive: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stack_over(
    dead_letters: impl backstop::dead_letter::DeadLetterSink + 'static,
    retries: impl backstop::retry::RetrySink + 'static,
    runs: &Arc<Mutex<Vec<Run>>>,
) -> backstop::Stack {
    StackBuilder::<String>::new(Arc::new(dead_letters))
        .retry(policy())
        .retry_sink(Arc::new(retries))
        .build(handler(Arc::clone(runs)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_through_retry_dead_letter_and_redrive_on_rabbitmq() {
    exporter();
    let url = url_from_env();
    let rabbit = RabbitMq::connect(url.clone())
        .await
        .expect("the test broker is reachable (scripts/services/rabbitmq.sh)");
    let topology = Topology::quorum(unique("otel"))
        .max_attempts(policy().max_attempts)
        .retry_tiers([Duration::from_millis(500)]);
    rabbit.declare(&topology).await.expect("declare");
    let (message_id, producer) = publish_traced(rabbit.publisher(), topology.queue()).await;

    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let stack = stack_over(rabbit.dead_letter_sink(), rabbit.retry_sink(), &runs);
    let source = rabbit.source(topology.queue(), 4).await.expect("consume");
    let dlq = Dlq::rabbit(&url, &topology.dlq(), Duration::from_secs(30))
        .await
        .expect("open the DLQ");
    let runs = consume_and_redrive(source, stack, &runs, || {
        redrive_one(&dlq, Duration::from_secs(20))
    })
    .await;
    common::cleanup_topology(&rabbit, &topology).await;

    assert_one_trace(producer, &message_id, &runs, "rabbitmq");
    for span in spans_of(&message_id)
        .iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
    {
        assert!(attribute(span, "messaging.rabbitmq.message.delivery_tag").is_some());
        assert_eq!(attribute(span, "messaging.kafka.offset"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_through_retry_dead_letter_and_redrive_on_kafka() {
    exporter();
    let brokers = backstop_kafka::brokers_from_env();
    let group = unique("otel_g");
    let kafka = Kafka::new(brokers.clone(), &group).configure(|c| {
        c.session_timeout = Duration::from_secs(6);
        c.auto_commit_interval = Duration::from_millis(200);
        c.message_timeout = Duration::from_secs(10);
        c.missing_topic_timeout = Duration::from_secs(2);
        c.retry_tiers = RetryTiers::new([Duration::from_secs(1)]);
    });
    let topic = unique("otel");
    kafka
        .ensure_topics([TopicSpec::new(topic.clone()).partitions(1)])
        .await
        .expect("create the topics");
    let (message_id, producer) =
        publish_traced(kafka.publisher().expect("a producer"), &topic).await;

    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let stack = stack_over(
        kafka.dead_letter_sink().expect("a DLQ producer"),
        kafka.retry_sink().expect("a retry producer"),
        &runs,
    );
    let source = kafka.source(&[&topic], 4).expect("consume");
    let dlq = Dlq::kafka(&brokers, &kafka.dlq_topic(&topic))
        .await
        .expect("open the DLQ");
    let runs = consume_and_redrive(source, stack, &runs, || {
        redrive_one(&dlq, Duration::from_secs(40))
    })
    .await;

    assert_one_trace(producer, &message_id, &runs, "kafka");
    let consumed: Vec<_> = spans_of(&message_id)
        .into_iter()
        .filter(|s| s.span_kind == SpanKind::Consumer)
        .collect();
    for span in &consumed {
        assert!(attribute(span, "messaging.kafka.offset").is_some());
        assert_eq!(
            attribute(span, "messaging.destination.partition.id").as_deref(),
            Some("0")
        );
        assert_eq!(
            attribute(span, "messaging.consumer.group.name").as_deref(),
            Some(group.as_str())
        );
    }
    assert!(
        attribute(&consumed[1], "messaging.destination.name")
            .is_some_and(|d| d.contains(".retry.")),
        "the retry copy came through the retry topic"
    );
}
