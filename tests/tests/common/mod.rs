//! Shared by the RabbitMQ suites that drive `order-worker`.

use std::time::Duration;

use backstop_rabbitmq::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use backstop_rabbitmq::{RabbitMq, Topology};

/// Deletes the queues and the exchange the worker declared for `queue`.
pub(crate) async fn cleanup(rabbit: &RabbitMq, queue: &str) {
    let Ok(channel) = rabbit.channel().await else {
        return;
    };
    // The worker's own topology (order-worker.rs): tiers 5 s, 30 s, 300 s.
    let secs = Duration::from_secs;
    let topology = Topology::quorum(queue).retry_tiers([secs(5), secs(30), secs(300)]);
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
