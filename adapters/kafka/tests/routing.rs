//! Routing by message type on Kafka: the CloudEvents `ce_type` header
//! (binary mode) picks the handler, and a type without a route is
//! dead-lettered as `unknown_type` while its offset is committed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::payload::DecodeError;
use backstop::router::{Routed, Router};
use backstop::{
    Context, HandlerError, KeySource, Message, Payload, StackBuilder, handler_fn, wire,
};
use common::*;

#[derive(Clone)]
struct OrderPlaced {
    order_id: String,
}

#[derive(Clone)]
struct OrderCancelled {
    order_id: String,
}

/// The body's `order_id` (this crate's tests have no serde derive).
fn order_id(bytes: &[u8]) -> Result<String, DecodeError> {
    let body: serde_json::Value = backstop::payload::json(bytes)?;
    match body["order_id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => Err(DecodeError::Invalid {
            type_name: "order",
            reason: "no order_id".into(),
        }),
    }
}

impl Payload for OrderPlaced {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        order_id(bytes).map(|order_id| OrderPlaced { order_id })
    }
}

impl Payload for OrderCancelled {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        order_id(bytes).map(|order_id| OrderCancelled { order_id })
    }
}

fn event(id: &str, ce_type: &str) -> Message {
    Message::new(r#"{"order_id":"o-1"}"#)
        .with_message_id(id)
        .with_key("o-1")
        .with_header("ce-specversion", "1.0")
        .with_header("ce_type", ce_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_type_header_picks_the_route_and_an_unknown_type_is_dead_lettered() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "routing", 1).await;
    let sent = [
        event("m-placed", "order.placed"),
        event("m-cancelled", "order.cancelled"),
        event("m-shipped", "order.shipped"),
    ];
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    let handled: Shared<BTreeSet<String>> = shared();
    let (placed, cancelled) = (Arc::clone(&handled), Arc::clone(&handled));
    let router = Router::builder()
        .route::<OrderPlaced, _>(
            "order.placed",
            handler_fn(move |order: OrderPlaced, ctx: Context| {
                let line = format!("placed {} {}", order.order_id, ctx.message_id());
                placed.lock().unwrap().insert(line);
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .route::<OrderCancelled, _>(
            "order.cancelled",
            handler_fn(move |order: OrderCancelled, ctx: Context| {
                let line = format!("cancelled {} {}", order.order_id, ctx.message_id());
                cancelled.lock().unwrap().insert(line);
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .build()
        .unwrap();
    let stack = StackBuilder::<Routed>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
        .build(router);
    let worker = run(kafka.source(&[&topic], 8).unwrap(), stack, 8);

    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 1, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(10), || handled.lock().unwrap().len()
            == 2)
        .await
    );
    let committed = committed_eventually(
        &kafka,
        &topic,
        &BTreeMap::from([(0, 3)]),
        Duration::from_secs(10),
    )
    .await;
    let summary = worker.stop().await;
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (2, 1),
        "{summary}"
    );
    assert_eq!(
        *handled.lock().unwrap(),
        BTreeSet::from([
            "placed o-1 m-placed".to_owned(),
            "cancelled o-1 m-cancelled".to_owned()
        ])
    );
    assert_eq!(
        committed.get(&0).copied().flatten(),
        Some(3),
        "every offset committed"
    );
    assert_eq!(ids(&letters), BTreeSet::from(["m-shipped".to_owned()]));
    let letter = &letters[0];
    assert_eq!(letter.header(wire::ERROR_KIND), Some("unknown_type"));
    let error = letter.header(wire::ERROR).unwrap();
    assert!(
        error.contains(r#"no route for message type "order.shipped""#),
        "{error}"
    );
    assert_eq!(
        letter.header("ce_type"),
        Some("order.shipped"),
        "the letter keeps its type"
    );
}
