//! Confirmed publishing against the real broker: what counts as published.

mod common;

use std::time::Duration;

use backstop::publish::{PublishError, Publisher};
use backstop::runner::Source;
use backstop::{Message, wire};
use backstop_rabbitmq::lapin::ExchangeKind;
use backstop_rabbitmq::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use common::{classic_queue, cleanup, next_within, quorum, rabbit, unique};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_payload_headers_and_message_id() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "roundtrip").await;
    let publisher = rabbit.publisher();
    let sent = Message::new(r#"{"order":"o-1"}"#)
        .with_message_id("id-round-trip")
        .with_header("tenant", "acme")
        .with_header(
            wire::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    publisher.publish(topology.queue(), &sent).await.unwrap();

    let mut source = rabbit.source(topology.queue(), 4).await.unwrap();
    let delivery = next_within(&mut source, WAIT).await.expect("delivered");
    let got = delivery.message().clone();
    assert_eq!(got.payload, sent.payload);
    assert_eq!(got.meta.message_id, "id-round-trip");
    assert_eq!(got.header(wire::MESSAGE_ID), Some("id-round-trip"));
    assert_eq!(got.header("tenant"), Some("acme"));
    assert_eq!(
        got.header(wire::TRACEPARENT),
        sent.header(wire::TRACEPARENT)
    );
    assert_eq!(&*got.meta.source, topology.queue());
    assert_eq!(got.meta.attempt, 1);
    assert!(!got.meta.redelivered);
    assert!(got.meta.delivery_tag.is_some());
    assert!(got.meta.timestamp.is_some());
    delivery.ack().await.unwrap();
    source.close().await;
    assert_eq!(
        rabbit.message_count(topology.queue()).await.unwrap(),
        0,
        "acked means gone"
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_fails_although_the_broker_confirmed_it() {
    let rabbit = rabbit().await;
    let publisher = rabbit.publisher();
    let missing = unique("no-such-queue");
    let error = publisher
        .publish(&missing, &Message::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PublishError::Unroutable(d) if *d == missing),
        "{error:?}"
    );
    // The channel survives a return: the next publish on it works.
    let topology = quorum(&rabbit, "after-return").await;
    publisher
        .publish(topology.queue(), &Message::new("y"))
        .await
        .unwrap();
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 1);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_closes_the_channel_and_the_next_publish_reopens_it() {
    let rabbit = rabbit().await;
    let publisher = rabbit.publisher();
    let exchange = unique("no-such-exchange");
    let error = publisher
        .publish(&format!("{exchange}/key"), &Message::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PublishError::MissingDestination(e) if *e == exchange),
        "{error:?}"
    );
    let topology = quorum(&rabbit, "after-404").await;
    publisher
        .publish(topology.queue(), &Message::new("y"))
        .await
        .unwrap();
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 1);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_and_routing_key_destination_reaches_the_bound_queue() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "routed").await;
    let exchange = unique("ex");
    let channel = rabbit.channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            topology.queue().into(),
            exchange.as_str().into(),
            "order.placed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = rabbit.publisher();
    publisher
        .publish(&format!("{exchange}/order.placed"), &Message::new("routed"))
        .await
        .unwrap();
    let wrong_key = publisher
        .publish(&format!("{exchange}/other"), &Message::new("lost"))
        .await;
    assert!(
        matches!(wrong_key, Err(PublishError::Unroutable(_))),
        "{wrong_key:?}"
    );
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 1);
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reject_publish_queue_nacks() {
    let rabbit = rabbit().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = classic_queue(&rabbit, "full", args).await;
    let channel = rabbit.channel().await.unwrap();
    let publisher = rabbit.publisher();
    publisher
        .publish(&queue, &Message::new("one"))
        .await
        .unwrap();
    let error = publisher
        .publish(&queue, &Message::new("two"))
        .await
        .unwrap_err();
    assert!(matches!(error, PublishError::Nacked), "{error:?}");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_persistent_and_carry_the_id_property() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "props").await;
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("p").with_message_id("m-props"),
        )
        .await
        .unwrap();
    let channel = rabbit.channel().await.unwrap();
    let got = channel
        .basic_get(topology.queue().into(), Default::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(*got.delivery.properties.delivery_mode(), Some(2));
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-props")
    );
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(matches!(
        headers.inner().get(wire::MESSAGE_ID),
        Some(AMQPValue::LongString(_))
    ));
    let _ = channel.close(200, "OK".into()).await;
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_twice_is_idempotent_and_a_different_shape_is_a_clear_error() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "redeclare").await;
    rabbit.declare(&topology).await.expect("same shape again");
    let other = backstop_rabbitmq::Topology::classic(topology.queue());
    let error = rabbit.declare(&other).await.unwrap_err();
    assert!(
        matches!(error, backstop_rabbitmq::TopologyError::Mismatch { .. }),
        "{error:?}"
    );
    cleanup(&rabbit, &topology).await;
}
