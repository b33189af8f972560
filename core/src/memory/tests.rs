use std::time::Duration;

use super::*;
use crate::error::AckError;
use crate::runner::Source;

async fn next(src: &mut MemorySource) -> crate::delivery::Delivery {
    tokio::time::timeout(Duration::from_secs(5), src.next())
        .await
        .expect("a delivery in time")
        .expect("source open")
        .expect("no error")
}

#[tokio::test]
async fn nack_with_requeue_redelivers_and_ack_forgets() {
    let broker = MemoryBroker::new();
    broker
        .publish_now("q", Message::new("a").with_message_id("a"))
        .unwrap();
    let mut src = broker.consume("q", 1);
    let d = next(&mut src).await;
    assert!(!d.message().meta.redelivered);
    d.nack(true).await.unwrap();
    let d = next(&mut src).await;
    assert!(d.message().meta.redelivered);
    assert_eq!(d.message().meta.message_id, "a");
    d.ack().await.unwrap();
    let s = broker.stats("q");
    assert_eq!(
        (s.ready, s.unacked, s.acked, s.nacked, s.redelivered),
        (0, 0, 1, 1, 1)
    );
}

#[tokio::test]
async fn closing_a_consumer_requeues_its_deliveries_and_stale_acks_fail() {
    let broker = MemoryBroker::new();
    broker.publish_now("q", Message::new("a")).unwrap();
    let mut src = broker.consume("q", 5);
    let d = next(&mut src).await;
    src.close().await;
    assert_eq!(broker.stats("q").ready, 1);
    assert!(matches!(d.ack().await, Err(AckError::Stale(_))));
    let mut again = broker.consume("q", 5);
    next(&mut again).await.ack().await.unwrap();
    assert_eq!(broker.stats("q").acked, 1);
}

/// A consumer takes what its window allows in one go; closing it puts the
/// deliveries it took but never handed out back at the head of the queue,
/// in their order, before the one it handed out.
#[tokio::test]
async fn closing_puts_back_what_was_taken_but_not_handed_out_in_order() {
    let broker = MemoryBroker::new();
    for i in 0..6 {
        broker
            .publish_now(
                "q",
                Message::new(format!("{i}")).with_message_id(format!("{i}")),
            )
            .unwrap();
    }
    let mut src = broker.consume("q", 4);
    let first = next(&mut src).await;
    assert_eq!(first.message().meta.message_id, "0");
    let s = broker.stats("q");
    assert_eq!((s.ready, s.unacked), (2, 4), "the window taken at once");
    src.close().await;
    let s = broker.stats("q");
    assert_eq!((s.ready, s.unacked), (6, 0), "all back");
    assert!(matches!(first.ack().await, Err(AckError::Stale(_))));
    let mut again = broker.consume("q", 10).until_drained();
    let mut order = Vec::new();
    while let Some(Ok(d)) = again.next().await {
        order.push(d.message().meta.message_id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(order.len(), 6);
    assert_eq!(
        order[1..4],
        ["1", "2", "3"],
        "the taken ones kept their order: {order:?}"
    );
    assert_eq!(broker.stats("q").acked, 6);
}

#[tokio::test]
async fn prefetch_bounds_unsettled_deliveries() {
    let broker = MemoryBroker::new();
    for i in 0..3 {
        broker
            .publish_now("q", Message::new(format!("{i}")))
            .unwrap();
    }
    let mut src = broker.consume("q", 2);
    let a = next(&mut src).await;
    let _b = next(&mut src).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), src.next())
            .await
            .is_err()
    );
    a.ack().await.unwrap();
    next(&mut src).await;
}

#[tokio::test(start_paused = true)]
async fn delayed_messages_become_visible_at_their_due_time() {
    let broker = MemoryBroker::new();
    broker
        .publish_delayed("q", Message::new("later"), Duration::from_secs(3))
        .unwrap();
    let mut src = broker.consume("q", 1);
    let start = tokio::time::Instant::now();
    next(&mut src).await.ack().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn full_queue_rejects_publishes() {
    let broker = MemoryBroker::new();
    broker.set_max_len("q", Some(1));
    broker.publish_now("q", Message::new("a")).unwrap();
    assert!(matches!(
        broker.publish_now("q", Message::new("b")),
        Err(PublishError::Full(_))
    ));
    assert_eq!(broker.stats("q").rejected, 1);
}

#[tokio::test]
async fn until_drained_ends_when_nothing_is_left() {
    let broker = MemoryBroker::new();
    broker.publish_now("q", Message::new("a")).unwrap();
    let mut src = broker.consume("q", 1).until_drained();
    next(&mut src).await.ack().await.unwrap();
    assert!(src.next().await.is_none());
}

#[tokio::test]
async fn the_messages_of_a_queue_share_its_name() {
    let broker = MemoryBroker::new();
    for body in ["a", "b"] {
        broker.publish_now("orders", Message::new(body)).unwrap();
    }
    broker.publish_now("audit", Message::new("c")).unwrap();
    let mut orders = broker.consume("orders", 2);
    let (a, b) = (next(&mut orders).await, next(&mut orders).await);
    let c = next(&mut broker.consume("audit", 1)).await;
    let (a, b, c) = (&a.message().meta, &b.message().meta, &c.message().meta);
    assert_eq!(
        (&*a.source, &*b.source, &*c.source),
        ("orders", "orders", "audit")
    );
    assert!(
        Arc::ptr_eq(&a.source, &b.source),
        "one copy of the name per queue"
    );
}
