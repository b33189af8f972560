//! Routing by message type on RabbitMQ: the AMQP `type` property a
//! publisher sets picks the handler, and a type without a route is
//! dead-lettered as `unknown_type` while the source is acked.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::router::{Routed, Router};
use backstop::{Context, HandlerError, KeySource, Runner, StackBuilder, handler_fn, wire};
use backstop_rabbitmq::lapin::BasicProperties;
use backstop_rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use common::{Seen, cleanup, count_reaches, drain, eventually, quorum, rabbit};

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct OrderPlaced {
    order_id: String,
}

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct OrderCancelled {
    order_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_type_property_picks_the_route_and_an_unknown_type_is_dead_lettered() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "routing").await;
    let channel = rabbit.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (id, kind) in [
        ("m-placed", "order.placed"),
        ("m-cancelled", "order.cancelled"),
        ("m-shipped", "order.shipped"),
    ] {
        channel
            .basic_publish(
                "".into(),
                topology.queue().into(),
                BasicPublishOptions::default(),
                br#"{"order_id":"o-1"}"#,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.into())
                    .with_type(kind.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let seen = Seen::default();
    let (placed, cancelled) = (seen.clone(), seen.clone());
    let router = Router::builder()
        .route::<OrderPlaced, _>(
            "order.placed",
            handler_fn(move |order: OrderPlaced, ctx: Context| {
                placed.insert(&format!("placed {} {}", order.order_id, ctx.message_id()));
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .route::<OrderCancelled, _>(
            "order.cancelled",
            handler_fn(move |order: OrderCancelled, ctx: Context| {
                cancelled.insert(&format!(
                    "cancelled {} {}",
                    order.order_id,
                    ctx.message_id()
                ));
                async { Ok::<_, HandlerError>(()) }
            }),
        )
        .build()
        .unwrap();
    let stack = StackBuilder::<Routed>::new(Arc::new(rabbit.dead_letter_sink()))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId)
        .build(router);
    let runner =
        Runner::new(rabbit.source(topology.queue(), 8).await.unwrap(), stack).concurrency(8);
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());

    assert!(
        count_reaches(&rabbit, &topology.dlq(), 1).await,
        "the unknown type's letter"
    );
    assert!(eventually(Duration::from_secs(5), || seen.len() == 2).await);
    token.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.handled, summary.dead_lettered), (2, 1));
    {
        let seen = seen.0.lock().unwrap();
        assert!(seen.contains("placed o-1 m-placed"), "{seen:?}");
        assert!(seen.contains("cancelled o-1 m-cancelled"), "{seen:?}");
    }
    assert_eq!(
        rabbit.message_count(topology.queue()).await.unwrap(),
        0,
        "all acked"
    );
    let letters = drain(&rabbit, &topology.dlq(), Duration::from_millis(300)).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.meta.message_id, "m-shipped");
    assert_eq!(letter.header(wire::ERROR_KIND), Some("unknown_type"));
    let error = letter.header(wire::ERROR).unwrap();
    assert!(
        error.contains(r#"no route for message type "order.shipped""#),
        "{error}"
    );
    assert_eq!(
        letter.meta.amqp.as_ref().and_then(|p| p.kind.as_deref()),
        Some("order.shipped"),
        "the letter keeps its type"
    );
    let _ = channel.close(200, "OK".into()).await;
    cleanup(&rabbit, &topology).await;
}
