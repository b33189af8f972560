//! Shared by the RabbitMQ suites that drive `order-worker`, and by those
//! that declare a topology of their own.
#![allow(dead_code)]

use std::time::Duration;

use backstop_rabbitmq::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use backstop_rabbitmq::{RabbitMq, Topology};

/// Deletes the queues and the exchange the worker declared for `queue`.
pub(crate) async fn cleanup(rabbit: &RabbitMq, queue: &str) {
    // The worker's own topology (order-worker.rs): tiers 5 s, 30 s, 300 s.
    let secs = Duration::from_secs;
    let topology = Topology::quorum(queue).retry_tiers([secs(5), secs(30), secs(300)]);
    cleanup_topology(rabbit, &topology).await;
}

/// Deletes `topology`'s queues (source, delay tiers, DLQ) and its exchange.
pub(crate) async fn cleanup_topology(rabbit: &RabbitMq, topology: &Topology) {
    let Ok(channel) = rabbit.channel().await else {
        return;
    };
    let queue = topology.queue();
    let mut queues: Vec<String> = topology
        .tiers()
        .iter()
        .map(|t| t.queue_for(queue))
        .collect();
    queues.push(topology.dlq());
    queues.push(queue.to_owned());
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.dlx().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}
