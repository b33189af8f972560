//! Routing by message type: one queue carrying three kinds of order events,
//! each with its own payload type and handler, on the embedded in-memory
//! broker. No services needed.
//!
//! ```text
//! cargo run -p backstop-examples --bin routing
//! ```
//!
//! The type is read from the header `type`, the AMQP `type` property
//! (RabbitMQ) or the CloudEvents header `ce_type` (Kafka, binary mode). An
//! event of a type nobody handles, or without a type, is dead-lettered as
//! `unknown_type`; a body that does not fit its type as `decode`. The
//! program exits non-zero unless every event was handled or dead-lettered
//! as expected.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backstop::idempotency::MemoryStore;
use backstop::memory::MemoryBroker;
use backstop::router::{Routed, Router};
use backstop::{
    Context, HandlerError, KeySource, Message, Payload, Runner, StackBuilder, handler_fn, wire,
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, Payload)]
struct OrderPlaced {
    order_id: String,
    amount: i64,
}

#[derive(Clone, Debug, Deserialize, Payload)]
struct OrderCancelled {
    order_id: String,
    reason: String,
}

#[derive(Clone, Debug, Deserialize, Payload)]
struct OrderShipped {
    order_id: String,
    carrier: String,
}

fn event(id: &str, body: &str) -> Message {
    Message::new(body.to_owned()).with_message_id(id)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    let publish = |message| broker.publish_now("orders", message);
    // A header `type`, as any producer can set it.
    publish(event("e-1", r#"{"order_id":"o-1","amount":5}"#).with_header("type", "order.placed"))?;
    // (On RabbitMQ the AMQP `type` property serves as well; the in-memory
    // broker carries headers only.)
    publish(
        event("e-2", r#"{"order_id":"o-2","reason":"changed mind"}"#)
            .with_header("type", "order.cancelled"),
    )?;
    // A CloudEvents `ce_type` header, as a Kafka producer in binary mode sets it.
    publish(
        event("e-3", r#"{"order_id":"o-3","carrier":"DHL"}"#)
            .with_header("ce_type", "order.shipped"),
    )?;
    // No route, no type, a body that is not an `OrderPlaced`: dead letters.
    publish(event("e-4", r#"{"order_id":"o-4"}"#).with_header("type", "order.refunded"))?;
    publish(event("e-5", r#"{"order_id":"o-5"}"#))?;
    publish(event("e-6", r#"{"order":"o-6"}"#).with_header("type", "order.placed"))?;

    let handled = Arc::new(AtomicU32::new(0));
    let (placed, cancelled, shipped) = (handled.clone(), handled.clone(), handled.clone());
    let router = Router::builder()
        .route::<OrderPlaced, _>(
            "order.placed",
            handler_fn(move |order: OrderPlaced, _ctx: Context| {
                println!("placed    {} for {}", order.order_id, order.amount);
                placed.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .route::<OrderCancelled, _>(
            "order.cancelled",
            handler_fn(move |order: OrderCancelled, _ctx: Context| {
                println!("cancelled {}: {}", order.order_id, order.reason);
                cancelled.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .route::<OrderShipped, _>(
            "order.shipped",
            handler_fn(move |order: OrderShipped, _ctx: Context| {
                println!("shipped   {} with {}", order.order_id, order.carrier);
                shipped.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .build()?;
    let stack = StackBuilder::<Routed>::new(Arc::new(broker.dead_letter_sink()))
        // The routes' payload keys are not known before routing: dedup by message id.
        .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
        .build(router);
    let summary = Runner::new(broker.consume("orders", 8).until_drained(), stack)
        .concurrency(8)
        .run()
        .await?;

    println!();
    let letters = broker.peek("orders.dlq");
    for letter in &letters {
        println!(
            "dead letter {}: {} ({})",
            letter.meta.message_id,
            letter.header(wire::ERROR_KIND).unwrap_or("?"),
            letter.header(wire::ERROR).unwrap_or("?"),
        );
    }
    let kinds: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.meta.message_id.as_str(),
                l.header(wire::ERROR_KIND).unwrap_or("?"),
            )
        })
        .collect();
    let expected = [
        ("e-4", "unknown_type"),
        ("e-5", "unknown_type"),
        ("e-6", "decode"),
    ];
    let source = broker.stats("orders");
    let ok = handled.load(Ordering::SeqCst) == 3
        && (summary.handled, summary.dead_lettered) == (3, 3)
        && expected.iter().all(|e| kinds.contains(e))
        && (source.acked, source.ready, source.unacked) == (6, 0, 0);
    println!("\n{summary}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
