//! The lifecycle events of whole runs on the in-memory broker, through the
//! stack's pipeline and through the tower layers: the same sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::{Layer, registry};

use super::TARGET;
use crate::context::Context;
use crate::error::HandlerError;
use crate::handler::handler_fn;
use crate::idempotency::{KeySource, MemoryStore};
use crate::memory::MemoryBroker;
use crate::message::Message;
use crate::retry::RetryPolicy;
use crate::runner::Runner;
use crate::stack::StackBuilder;
use crate::testing::Order;

/// One captured lifecycle event: its name and its fields as text.
#[derive(Clone, Debug)]
struct Event {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Event {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every event of [`TARGET`] (and, when `.1`, each
/// `backstop.message` span's close as an event `span_closed`).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Event>>>, bool);

impl Capture {
    fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The fields a `backstop.message` span was made with.
struct SpanFields(BTreeMap<String, String>);

impl<S> Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    /// Keeps the fields of each `backstop.message` span, for its close.
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        if attrs.metadata().name() != "backstop.message" {
            return;
        }
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    /// A `backstop.message` span's close, as an event `span_closed` of its
    /// message.
    fn on_close(&self, id: tracing::span::Id, ctx: LayerContext<'_, S>) {
        if !self.1 {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        let Some(SpanFields(fields)) = span.extensions_mut().remove::<SpanFields>() else {
            return;
        };
        if let Ok(mut events) = self.0.lock() {
            events.push(Event {
                name: "span_closed".to_owned(),
                fields,
            });
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        assert_eq!(*event.metadata().level(), tracing::Level::DEBUG);
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        let name = fields.0.remove("message").unwrap_or_default();
        if let Ok(mut events) = self.0.lock() {
            events.push(Event {
                name,
                fields: fields.0,
            });
        }
    }
}

fn order(message_id: &str, key: &str, amount: i64) -> Message {
    Message::new(format!(r#"{{"order_id":"{key}","amount":{amount}}}"#)).with_message_id(message_id)
}

/// The handler of every run: the amount says what it does. 0 succeeds; 1
/// fails transiently on its first attempt; 2 fails for good; 3 asks for a
/// retry in a minute on its first attempt (deferred through the broker).
async fn handle(order: Order, ctx: Context) -> Result<(), HandlerError> {
    match (order.amount, ctx.attempt()) {
        (1, 1) => Err(HandlerError::transient("flaky")),
        (2, _) => Err(HandlerError::permanent("refused")),
        (3, 1) => Err(HandlerError::transient("later").retry_after(Duration::from_millis(30))),
        _ => Ok(()),
    }
}

/// Drains `messages` one at a time through the stack (the tower layers'
/// when `layered`) with a debug capture installed; the events by message id.
///
/// The same run goes first without the capture. A callsite's interest is
/// decided when it is first hit, and a test on another thread can hit one
/// of these events first with no subscriber, at the moment this capture
/// registers: that callsite then stays disabled for this run. Run first,
/// every callsite of the run is registered here, and installing the
/// capture asks each one again.
async fn lifecycle(messages: Vec<Message>, layered: bool) -> BTreeMap<String, Vec<Event>> {
    captured(messages, layered, Capture::default()).await
}

/// [`lifecycle`] with each message span's close among the events.
async fn with_span_closes(messages: Vec<Message>, layered: bool) -> BTreeMap<String, Vec<Event>> {
    captured(messages, layered, Capture(Arc::default(), true)).await
}

/// Held by every test of this module while its subscriber is installed.
///
/// Installing or dropping a scoped subscriber makes tracing ask every
/// callsite's interest again, of every live subscriber, on the thread that
/// installed or dropped it; a per-layer filter answers from that thread's
/// own filtering state. Two of these tests installing and dropping
/// captures at once could so leave one of this capture's callsites
/// disabled for the rest of its run (seen: a run missing its `received`,
/// `attempt_started` and `acked` events). One capture at a time, and no
/// other test of the crate installs a subscriber.
static ONE_CAPTURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Drains `messages` (once uncaptured, see [`lifecycle`]) into `capture`.
async fn captured(
    messages: Vec<Message>,
    layered: bool,
    capture: Capture,
) -> BTreeMap<String, Vec<Event>> {
    let _one_at_a_time = ONE_CAPTURE.lock().await;
    drain(messages.clone(), layered).await;
    let subscriber = registry().with(capture.clone().with_filter(LevelFilter::DEBUG));
    let _default = tracing::subscriber::set_default(subscriber);
    drain(messages, layered).await;
    let mut by_message: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for event in capture.events() {
        let id = event.field("message_id").unwrap_or_default().to_owned();
        by_message.entry(id).or_default().push(event);
    }
    by_message
}

/// Drains `messages` one at a time through a fresh broker and stack.
async fn drain(messages: Vec<Message>, layered: bool) {
    let broker = MemoryBroker::new();
    for message in messages {
        broker.publish_now("orders", message).expect("publish");
    }
    let builder = StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
        .retry(
            RetryPolicy::retries(2)
                .backoff(Duration::from_millis(1), Duration::from_millis(5))
                .in_process_limit(Duration::from_millis(10)),
        )
        .retry_sink(Arc::new(broker.retry_sink()))
        .idempotency(
            Arc::new(MemoryStore::new(100, Duration::from_secs(60))),
            KeySource::Payload,
        );
    let stack = if layered {
        builder.build_layered(handler_fn(handle))
    } else {
        builder.build(handler_fn(handle))
    };
    Runner::new(broker.consume("orders", 1).until_drained(), stack)
        .concurrency(1)
        .run()
        .await
        .expect("run");
}

/// `(name, attempt)` of each event.
fn steps(events: &[Event]) -> Vec<(&str, Option<&str>)> {
    events
        .iter()
        .map(|e| (e.name.as_str(), e.field("attempt")))
        .collect()
}

/// The names of `events` in order, `span_closed` among them.
fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// Runs `messages` on the pipeline and on the tower layers, asserts both
/// emit the same events, and returns the pipeline's.
async fn on_both(messages: Vec<Message>) -> BTreeMap<String, Vec<Event>> {
    let pipeline = lifecycle(messages.clone(), false).await;
    let layered = lifecycle(messages, true).await;
    let names = |events: &BTreeMap<String, Vec<Event>>| {
        events
            .iter()
            .map(|(id, e)| (id.clone(), format!("{:?}", steps(e))))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&pipeline), names(&layered));
    pipeline
}

#[tokio::test]
async fn a_handled_message_is_received_decoded_claimed_run_and_acked() {
    let events = on_both(vec![order("m-ok", "a", 0)]).await;
    let ok = &events["m-ok"];
    assert_eq!(
        steps(ok),
        [
            ("received", Some("1")),
            ("decoded", Some("1")),
            ("claimed", Some("1")),
            ("attempt_started", Some("1")),
            ("acked", None),
        ]
    );
    assert_eq!(ok[4].field("outcome"), Some("handled"));
    for event in ok {
        assert_eq!(event.field("source"), Some("orders"), "{event:?}");
        assert!(event.field("delivery_tag").is_some(), "{event:?}");
        assert_eq!(event.field("partition"), None, "no partition off Kafka");
        assert_eq!(event.field("offset"), None, "no offset off Kafka");
    }
}

#[tokio::test]
async fn a_transient_failure_then_success_shows_both_attempts() {
    let events = on_both(vec![order("m-flaky", "b", 1)]).await;
    let flaky = &events["m-flaky"];
    assert_eq!(
        steps(flaky),
        [
            ("received", Some("1")),
            ("decoded", Some("1")),
            ("claimed", Some("1")),
            ("attempt_started", Some("1")),
            ("attempt_failed", Some("1")),
            ("attempt_started", Some("2")),
            ("acked", None),
        ]
    );
    let failed = &flaky[4];
    assert_eq!(failed.field("kind"), Some("exhausted"));
    assert_eq!(failed.field("transient"), Some("true"));
    assert_eq!(failed.field("error"), Some("transient failure: flaky"));
    assert_eq!(flaky[6].field("outcome"), Some("handled"));
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_then_acked() {
    let events = on_both(vec![order("m-bad", "c", 2)]).await;
    let bad = &events["m-bad"];
    assert_eq!(
        steps(bad),
        [
            ("received", Some("1")),
            ("decoded", Some("1")),
            ("claimed", Some("1")),
            ("attempt_started", Some("1")),
            ("attempt_failed", Some("1")),
            ("dead_lettered", Some("1")),
            ("acked", None),
        ]
    );
    assert_eq!(bad[4].field("kind"), Some("permanent"));
    assert_eq!(bad[4].field("transient"), Some("false"));
    assert_eq!(bad[5].field("kind"), Some("permanent"));
    assert_eq!(bad[6].field("outcome"), Some("dead_lettered"));
}

#[tokio::test]
async fn a_long_retry_is_deferred_and_its_copy_runs_as_the_next_attempt() {
    let events = on_both(vec![order("m-later", "d", 3)]).await;
    let later = &events["m-later"];
    assert_eq!(
        steps(later),
        [
            ("received", Some("1")),
            ("decoded", Some("1")),
            ("claimed", Some("1")),
            ("attempt_started", Some("1")),
            ("attempt_failed", Some("1")),
            ("deferred", Some("2")),
            ("acked", None),
            // The copy, from the delay queue.
            ("received", Some("2")),
            ("decoded", Some("2")),
            ("claimed", Some("2")),
            ("attempt_started", Some("2")),
            ("acked", None),
        ]
    );
    assert_eq!(later[6].field("outcome"), Some("deferred"));
    assert_eq!(later[11].field("outcome"), Some("handled"));
}

#[tokio::test]
async fn a_duplicate_is_acked_without_running() {
    let events = on_both(vec![order("m-first", "e", 0), order("m-again", "e", 0)]).await;
    assert_eq!(
        events["m-first"].last().map(|e| e.name.as_str()),
        Some("acked")
    );
    let again = &events["m-again"];
    assert_eq!(
        steps(again),
        [
            ("received", Some("1")),
            ("decoded", Some("1")),
            ("duplicate", None),
            ("acked", None),
        ]
    );
    assert_eq!(again[3].field("outcome"), Some("duplicate"));
}

#[tokio::test]
async fn a_body_that_does_not_decode_says_why() {
    let events = on_both(vec![Message::new("{oops").with_message_id("m-garbled")]).await;
    let garbled = &events["m-garbled"];
    let names: Vec<&str> = garbled.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "received",
            "decoded",
            "attempt_started",
            "attempt_failed",
            "dead_lettered",
            "acked"
        ]
    );
    assert_eq!(garbled[1].field("kind"), Some("decode"));
    assert!(garbled[1].field("error").is_some());
}

#[tokio::test]
async fn nothing_is_emitted_below_debug() {
    let _one_at_a_time = ONE_CAPTURE.lock().await;
    let capture = Capture::default();
    let subscriber = registry().with(capture.clone().with_filter(LevelFilter::INFO));
    let _default = tracing::subscriber::set_default(subscriber);
    let broker = MemoryBroker::new();
    broker
        .publish_now("orders", order("m-quiet", "f", 0))
        .expect("publish");
    let stack =
        StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink())).build(handler_fn(handle));
    let summary = Runner::new(broker.consume("orders", 1).until_drained(), stack)
        .run()
        .await
        .expect("run");
    assert_eq!(summary.handled, 1);
    assert!(capture.events().is_empty(), "{:?}", capture.events());
}

/// The message's span ends with its run, before the delivery is settled:
/// its duration is the run's, not the ack's or a nack's delay.
#[tokio::test]
async fn the_message_span_closes_before_the_delivery_is_settled() {
    for layered in [false, true] {
        let events = with_span_closes(vec![order("m-span", "s", 0)], layered).await;
        let span = &events["m-span"];
        assert_eq!(
            names(span),
            [
                "received",
                "decoded",
                "claimed",
                "attempt_started",
                "span_closed",
                "acked"
            ],
            "layered: {layered}"
        );
    }
}
