//! A reliable publisher over a RabbitMQ node list whose first node does not
//! answer: every publish is confirmed through the next node, none spooled.

mod common;

use std::time::Duration;

use backstop_rabbitmq::{RabbitMq, url_from_env};
use backstop_spool::{ReliablePublisher, Sent, SpoolConfig};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_publisher_on_a_node_list_confirms_past_a_dead_node() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Port 1 of this host: nothing listens there.
    let urls = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", url_from_env());
    let rabbit = RabbitMq::connect_with(urls, rabbit::options())
        .await
        .expect("the second node answers");
    let queue = rabbit::queue(&rabbit, "node-list").await;
    let publisher = ReliablePublisher::builder(
        rabbit.publisher(),
        SpoolConfig::new(dir.path().join("rabbit.spool")),
    )
    .budget(quick_budget())
    .relay(quick_relay())
    .open()
    .await
    .unwrap();
    let all = messages("node-list", 20, 4);
    for m in &all {
        let sent = publisher.publish(&queue, m).await.expect("published");
        assert!(matches!(sent, Sent::Confirmed), "{sent:?}");
    }
    publisher.close().await.unwrap();
    let got = rabbit::drain(&rabbit, &queue, all.len(), Duration::from_secs(2)).await;
    assert_eq!(got.len(), all.len());
    rabbit::delete(&rabbit, &queue).await;
}
