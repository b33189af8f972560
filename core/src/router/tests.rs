//! The router alone: which route runs, and the verdict for what has none.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::context::Extensions;
use crate::handler::handler_fn;
use crate::inbound::AmqpProperties;
use crate::payload::DecodeError;

#[derive(Clone, Debug, serde::Deserialize)]
struct Placed {
    order_id: String,
}

impl Payload for Placed {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::payload::json(bytes)
    }
}

/// Counts its decodes, to show a retried message is decoded once.
#[derive(Clone, Debug)]
struct Cancelled;

thread_local! {
    /// Per test thread (tests run in parallel; each on its own thread,
    /// with a current-thread runtime), so other tests' decodes do not count.
    static CANCELLED_DECODES: Cell<u32> = const { Cell::new(0) };
}

impl Payload for Cancelled {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        CANCELLED_DECODES.set(CANCELLED_DECODES.get() + 1);
        crate::payload::json::<serde_json::Value>(bytes).map(|_| Cancelled)
    }
}

type Seen = Arc<Mutex<Vec<String>>>;

/// A router of `order.placed` and `order.cancelled` that records what ran.
fn router(seen: &Seen) -> RouterBuilder<impl Routes> {
    let (placed, cancelled) = (seen.clone(), seen.clone());
    Router::builder()
        .route::<Placed, _>(
            "order.placed",
            handler_fn(move |order: Placed, _ctx: Context| {
                let seen = placed.clone();
                async move {
                    if order.order_id == "flaky" {
                        return Err(HandlerError::transient("warehouse busy"));
                    }
                    seen.lock()
                        .unwrap()
                        .push(format!("placed {}", order.order_id));
                    Ok(())
                }
            }),
        )
        .route::<Cancelled, _>(
            "order.cancelled",
            handler_fn(move |_: Cancelled, _ctx: Context| {
                let seen = cancelled.clone();
                async move {
                    seen.lock().unwrap().push("cancelled".to_owned());
                    Ok::<_, HandlerError>(())
                }
            }),
        )
}

async fn run<R: Routes>(router: &Router<R>, message: Message) -> Result<(), HandlerError> {
    let routed = Routed::new(message.payload.clone());
    let ctx = Context::new(
        Arc::new(message),
        1,
        CancellationToken::new(),
        Extensions::default(),
    );
    router.handle(routed, ctx).await
}

fn body() -> Message {
    Message::new(r#"{"order_id":"o-1"}"#)
}

fn with_amqp_type(message: Message, kind: &str) -> Message {
    let mut message = message;
    message.meta.amqp = Some(AmqpProperties {
        kind: Some(kind.to_owned()),
        ..AmqpProperties::default()
    });
    message
}

#[tokio::test]
async fn picks_the_route_by_the_type_header() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    run(&router, body().with_header("type", "order.placed"))
        .await
        .unwrap();
    run(&router, body().with_header("type", "order.cancelled"))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["placed o-1", "cancelled"]);
}

#[tokio::test]
async fn picks_the_route_by_the_amqp_type_property() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    run(&router, with_amqp_type(body(), "order.cancelled"))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["cancelled"]);
}

#[tokio::test]
async fn picks_the_route_by_the_cloudevents_type_header() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    // The Kafka binding's spelling (what CloudEvents SDKs write), then the
    // HTTP binding's.
    run(&router, body().with_header("ce_type", "order.placed"))
        .await
        .unwrap();
    run(&router, body().with_header("ce-type", "order.placed"))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["placed o-1", "placed o-1"]);
}

#[tokio::test]
async fn the_type_header_comes_before_the_amqp_property_and_ce_type() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let message = with_amqp_type(body(), "order.cancelled")
        .with_header("ce-type", "order.cancelled")
        .with_header("type", "order.placed");
    run(&router, message).await.unwrap();
    let message = with_amqp_type(body(), "order.placed")
        .with_header("ce-type", "order.cancelled")
        .with_header("type", "");
    run(&router, message).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["placed o-1", "placed o-1"],
        "an empty `type` counts as none"
    );
}

#[tokio::test]
async fn picks_the_route_by_a_user_function() {
    let seen = Seen::default();
    let router = router(&seen)
        .type_from(|message| message.header("event"))
        .build()
        .unwrap();
    run(&router, body().with_header("event", "order.cancelled"))
        .await
        .unwrap();
    let ignored = run(&router, body().with_header("type", "order.placed")).await;
    assert_eq!(*seen.lock().unwrap(), ["cancelled"]);
    let error = ignored.unwrap_err().to_string();
    assert!(
        error.starts_with(
            "permanent failure: message has no type (the router's type function found none)"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn an_unknown_type_fails_permanently_as_unknown_type_naming_it_and_the_routes() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let error = run(&router, body().with_header("type", "order.shipped"))
        .await
        .unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(error.kind(), ErrorKind::UnknownType);
    assert_eq!(
        crate::error::chain(&error),
        r#"permanent failure: no route for message type "order.shipped"; known types: "order.placed", "order.cancelled""#
    );
    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
}

#[tokio::test]
async fn a_message_without_a_type_fails_as_unknown_type() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let error = run(&router, body()).await.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(error.kind(), ErrorKind::UnknownType);
    assert_eq!(
        crate::error::chain(&error),
        r#"permanent failure: message has no type header (looked at header "type", the AMQP type property and headers "ce_type" and "ce-type"); known types: "order.placed", "order.cancelled""#
    );
}

#[tokio::test]
async fn a_body_that_does_not_decode_for_its_route_fails_as_decode() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let message = Message::new(r#"{"no_order_id":1}"#).with_header("type", "order.placed");
    let error = run(&router, message).await.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(error.kind(), ErrorKind::Decode);
    assert!(error.to_string().contains("Placed"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "the handler did not run");
}

#[tokio::test]
async fn a_route_handlers_transient_error_stays_transient() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let message = Message::new(r#"{"order_id":"flaky"}"#).with_header("type", "order.placed");
    let error = run(&router, message).await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.kind(), ErrorKind::Exhausted);
}

#[tokio::test]
async fn a_retried_message_is_decoded_once() {
    let seen = Seen::default();
    let router = router(&seen).build().unwrap();
    let message = Arc::new(body().with_header("type", "order.cancelled"));
    let routed = Routed::new(message.payload.clone());
    let before = CANCELLED_DECODES.get();
    for attempt in 1..=3 {
        let ctx = Context::new(
            message.clone(),
            attempt,
            CancellationToken::new(),
            Extensions::default(),
        );
        // Each attempt gets a copy sharing the kept value, as the stack
        // gives it (`Payload::shared_copy`).
        router
            .handle(routed.shared_copy().expect("a shared copy"), ctx)
            .await
            .unwrap();
    }
    assert_eq!(CANCELLED_DECODES.get() - before, 1);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// Through the stack: three attempts of a routed message (two transient
/// failures), one decode of its route's type.
#[tokio::test]
async fn a_message_the_stack_retries_is_decoded_once() {
    let router = Router::builder()
        .route::<Cancelled, _>(
            "order.cancelled",
            handler_fn(|_: Cancelled, ctx: Context| async move {
                if ctx.attempt() < 3 {
                    Err(HandlerError::transient("busy"))
                } else {
                    Ok(())
                }
            }),
        )
        .build()
        .unwrap();
    let broker = crate::memory::MemoryBroker::new();
    broker
        .publish_now("routed", body().with_header("type", "order.cancelled"))
        .unwrap();
    let stack = crate::stack::StackBuilder::<Routed>::new(Arc::new(broker.dead_letter_sink()))
        .retry(crate::retry::RetryPolicy::retries(2).backoff(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(5),
        ))
        .build(router);
    let before = CANCELLED_DECODES.get();
    let summary = crate::runner::Runner::new(broker.consume("routed", 1).until_drained(), stack)
        .run()
        .await
        .unwrap();
    assert_eq!(summary.handled, 1, "{summary:?}");
    assert_eq!(
        CANCELLED_DECODES.get() - before,
        1,
        "three attempts, one decode"
    );
}

#[test]
fn a_type_routed_twice_is_refused_when_building() {
    let seen = Seen::default();
    let error = router(&seen)
        .route::<Placed, _>(
            "order.placed",
            handler_fn(|_: Placed, _: Context| async { Ok::<_, HandlerError>(()) }),
        )
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        RouterError::DuplicateRoute {
            name: "order.placed".into()
        }
    );
    assert_eq!(
        error.to_string(),
        r#"message type "order.placed" is routed twice: give each type one route"#
    );
}

#[test]
fn empty_names_and_no_routes_are_refused_when_building() {
    let seen = Seen::default();
    let empty = router(&seen)
        .route::<Placed, _>(
            "",
            handler_fn(|_: Placed, _: Context| async { Ok::<_, HandlerError>(()) }),
        )
        .build();
    assert_eq!(empty.unwrap_err(), RouterError::EmptyName);
    assert_eq!(
        Router::builder().build().unwrap_err(),
        RouterError::NoRoutes
    );
}

#[test]
fn the_known_types_in_an_error_are_bounded() {
    let names: Vec<String> = (0..40)
        .map(|i| format!("type-{i}-{}", "x".repeat(100)))
        .collect();
    let text = known(&names);
    assert!(text.ends_with(" and 33 more"), "{text}");
    assert!(text.len() < KNOWN_BUDGET + 20, "{}", text.len());
    let unknown = UnknownType::new(Some(&"y".repeat(1000)), DEFAULT_UNTYPED, text.into());
    assert_eq!(unknown.seen().map(|s| s.chars().count()), Some(129));
}

/// The whole stack on the in-memory broker, as the pipeline and as the
/// tower layers: every message settled once, the unknown one dead-lettered.
mod whole_stack {
    use std::time::Duration;

    use super::*;
    use crate::idempotency::{KeySource, MemoryStore};
    use crate::memory::MemoryBroker;
    use crate::retry::RetryPolicy;
    use crate::runner::Runner;
    use crate::stack::StackBuilder;
    use crate::wire;

    fn event(id: &str, ty: &str, body: &str) -> Message {
        Message::new(body.to_owned())
            .with_message_id(id)
            .with_header("type", ty)
    }

    async fn two_types_run_once_each_and_an_unknown_type_is_dead_lettered(layered: bool) {
        let broker = MemoryBroker::new();
        let publish = |m| broker.publish_now("orders", m).unwrap();
        publish(event("m-1", "order.placed", r#"{"order_id":"o-1"}"#));
        publish(event("m-2", "order.cancelled", r#"{"order_id":"o-1"}"#));
        publish(event("m-3", "order.shipped", r#"{"order_id":"o-1"}"#));
        publish(event("m-4", "order.placed", r#"{"order_id":"flaky"}"#));
        publish(event("m-5", "order.placed", "not json"));
        publish(Message::new("{}").with_message_id("m-6"));

        let seen = Seen::default();
        let router = router(&seen).build().unwrap();
        let builder = StackBuilder::<Routed>::new(Arc::new(broker.dead_letter_sink()))
            .retry(
                RetryPolicy::retries(2).backoff(Duration::from_millis(1), Duration::from_millis(2)),
            )
            .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
            .nack_delay(Duration::from_millis(20));
        let stack = if layered {
            builder.build_layered(router)
        } else {
            builder.build(router)
        };
        let summary = Runner::new(broker.consume("orders", 4).until_drained(), stack)
            .concurrency(4)
            .run()
            .await
            .unwrap();

        assert_eq!(*seen.lock().unwrap(), ["placed o-1", "cancelled"]);
        assert_eq!((summary.handled, summary.dead_lettered), (2, 4));
        let source = broker.stats("orders");
        assert_eq!(
            (source.acked, source.ready, source.unacked),
            (6, 0, 0),
            "every message acked from the source, nothing lost"
        );
        let letters = broker.peek("orders.dlq");
        let letter = |id: &str| {
            letters
                .iter()
                .find(|l| l.header(wire::MESSAGE_ID) == Some(id))
                .unwrap_or_else(|| panic!("no letter {id}"))
        };
        assert_eq!(letter("m-3").header(wire::ERROR_KIND), Some("unknown_type"));
        assert_eq!(
            letter("m-3").header(wire::ATTEMPT),
            Some("1"),
            "never retried"
        );
        let error = letter("m-3").header(wire::ERROR).unwrap();
        assert!(
            error.contains(r#"no route for message type "order.shipped""#),
            "{error}"
        );
        assert_eq!(
            letter("m-3").header("type"),
            Some("order.shipped"),
            "headers kept"
        );
        assert_eq!(letter("m-4").header(wire::ERROR_KIND), Some("exhausted"));
        assert_eq!(letter("m-4").header(wire::ATTEMPT), Some("3"), "retried");
        assert_eq!(letter("m-5").header(wire::ERROR_KIND), Some("decode"));
        assert_eq!(letter("m-6").header(wire::ERROR_KIND), Some("unknown_type"));
    }

    #[tokio::test]
    async fn pipeline() {
        two_types_run_once_each_and_an_unknown_type_is_dead_lettered(false).await;
    }

    #[tokio::test]
    async fn tower_layers() {
        two_types_run_once_each_and_an_unknown_type_is_dead_lettered(true).await;
    }
}
