//! A node list: `RabbitMq::connect` with several URLs fails over past a node
//! that does not answer, for the shared connection (publishers,
//! declarations) and for sources. The dead node is a closed port of this
//! host, so the test needs only the one test broker.

mod common;

use std::time::Duration;

use backstop::Message;
use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop_rabbitmq::{ConnectError, ConnectOptions, RabbitMq, Topology, url_from_env};
use common::{cleanup, next_within, unique};

/// A URL where nothing listens (port 1 of this host).
const DEAD_NODE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn options() -> ConnectOptions {
    ConnectOptions::default()
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_list_fails_over_past_a_dead_node_for_publishers_and_sources() {
    let urls = format!("{DEAD_NODE},{}", url_from_env());
    let rabbit = RabbitMq::connect_with(urls, options())
        .await
        .expect("the second node answers");
    let topology = Topology::quorum(unique("failover"));
    rabbit.declare(&topology).await.expect("declare");
    let publisher = rabbit.publisher();
    for i in 0..5 {
        publisher
            .publish(
                topology.queue(),
                &Message::new(format!("m{i}")).with_message_id(format!("failover-{i}")),
            )
            .await
            .expect("a confirmed publish through the live node");
    }
    // The shared connection is reopened through the list too.
    rabbit.close().await;
    publisher
        .publish(
            topology.queue(),
            &Message::new("m5").with_message_id("failover-5"),
        )
        .await
        .expect("a publish after the shared connection was closed");

    let mut source = rabbit.source(topology.queue(), 8).await.expect("source");
    let mut ids = Vec::new();
    while ids.len() < 6 {
        let delivery = next_within(&mut source, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("only {ids:?} arrived"));
        ids.push(delivery.message().meta.message_id.clone());
        delivery.ack().await.expect("ack");
    }
    source.close().await;
    ids.sort();
    assert_eq!(
        ids,
        (0..6).map(|i| format!("failover-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}

#[tokio::test]
async fn a_list_of_dead_nodes_fails_with_the_last_nodes_error() {
    let urls = format!("{DEAD_NODE},amqp://guest:guest@127.0.0.1:2/%2f");
    let error = RabbitMq::connect_with(urls, options())
        .await
        .expect_err("no node answers");
    assert!(
        matches!(&error, ConnectError::Connect { url, .. } if url.contains(":2/")),
        "{error:?}"
    );
    assert!(!error.to_string().contains("guest:guest"), "{error}");
}
