//! Helpers shared by the integration tests (each test binary includes what it uses).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::Message;
use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop_rabbitmq::lapin::options::{
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use backstop_rabbitmq::{RabbitMq, RabbitPublisher, RabbitSource, Topology, url_from_env};
use futures::StreamExt;

/// A connected handle to the test broker.
pub async fn rabbit() -> RabbitMq {
    RabbitMq::connect(url_from_env())
        .await
        .expect("the test broker is reachable (scripts/services/rabbitmq.sh)")
}

/// A queue name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("bt-{prefix}-{}", &backstop::message::new_message_id()[..12])
}

/// Declares a quorum topology for a fresh queue.
pub async fn quorum(rabbit: &RabbitMq, prefix: &str) -> Topology {
    let topology = Topology::quorum(unique(prefix));
    rabbit.declare(&topology).await.expect("declare");
    topology
}

/// Deletes a topology's queues and exchange (best effort).
pub async fn cleanup(rabbit: &RabbitMq, topology: &Topology) {
    let Ok(channel) = rabbit.channel().await else {
        return;
    };
    let mut queues = vec![topology.queue().to_owned(), topology.dlq()];
    queues.extend(
        topology
            .tiers()
            .iter()
            .map(|t| t.queue_for(topology.queue())),
    );
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.dlx().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = channel.close(200, "OK".into()).await;
}

/// Message `i` of a run: payload `{"n":i}`, id `<run>-<i>`.
pub fn numbered(run: &str, i: usize) -> Message {
    Message::new(format!("{{\"n\":{i}}}")).with_message_id(format!("{run}-{i}"))
}

/// Publishes `n` numbered messages to `queue`, many confirms in flight at once.
pub async fn publish_numbered(publisher: &RabbitPublisher, queue: &str, run: &str, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let publisher = publisher.clone();
            let message = numbered(run, i);
            async move { publisher.publish(queue, &message).await }
        })
        .buffer_unordered(256)
        .for_each(|result| async move { result.expect("publish confirmed") })
        .await;
}

/// The next delivery within `wait`, panicking on a source error.
pub async fn next_within(
    source: &mut RabbitSource,
    wait: Duration,
) -> Option<backstop::delivery::Delivery> {
    match tokio::time::timeout(wait, source.next()).await {
        Ok(Some(Ok(delivery))) => Some(delivery),
        Ok(Some(Err(error))) => panic!("source failed: {error}"),
        Ok(None) => panic!("source ended"),
        Err(_) => None,
    }
}

/// Reads every message in `queue` (acking it) until none arrives for
/// `quiet`. The messages the broker holds when the drain starts are waited
/// for up to [`WAIT_FOR_READY`] each: on a loaded machine (a quorum queue
/// registers its consumer through its log) the first delivery can take
/// longer than `quiet`, and a short wait would read them as absent. Only
/// what might still arrive after them waits `quiet`.
pub async fn drain(rabbit: &RabbitMq, queue: &str, quiet: Duration) -> Vec<Message> {
    let ready = rabbit.message_count(queue).await.expect("queue exists") as usize;
    let mut source = rabbit.source(queue, 64).await.expect("consume");
    let mut out = Vec::new();
    loop {
        let wait = if out.len() < ready {
            WAIT_FOR_READY
        } else {
            quiet
        };
        let Some(delivery) = next_within(&mut source, wait).await else {
            break;
        };
        out.push(delivery.message().clone());
        delivery.ack().await.expect("ack");
    }
    source.close().await;
    out
}

/// How long [`drain`] waits for each message the broker held when it started.
pub const WAIT_FOR_READY: Duration = Duration::from_secs(30);

/// A set of message ids seen by a handler, shared across tasks.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<HashSet<String>>>);

impl Seen {
    pub fn insert(&self, id: &str) {
        self.0.lock().unwrap().insert(id.to_owned());
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn missing(&self, run: &str, n: usize) -> Vec<String> {
        let seen = self.0.lock().unwrap();
        (0..n)
            .map(|i| format!("{run}-{i}"))
            .filter(|id| !seen.contains(id))
            .collect()
    }
}

/// Waits until `done()` holds, polling; false after `limit`.
pub async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// Waits until `queue` holds `n` ready messages, polling; false after 10 s.
pub async fn count_reaches(rabbit: &RabbitMq, queue: &str, n: u32) -> bool {
    for _ in 0..100 {
        if rabbit.message_count(queue).await.ok() == Some(n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until a runner reports it halted (a letter it can never write);
/// false after 15 s.
pub async fn halted(readiness: &backstop::runner::Readiness) -> bool {
    for _ in 0..150 {
        if readiness.get().is_err_and(|why| why.starts_with("halted")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Declares a durable classic queue with `arguments`.
pub async fn classic_queue(rabbit: &RabbitMq, prefix: &str, arguments: FieldTable) -> String {
    let queue = unique(prefix);
    let channel = rabbit.channel().await.expect("channel");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare");
    let _ = channel.close(200, "OK".into()).await;
    queue
}

/// A classic queue that holds one message and refuses more (`x-max-length`
/// 1, `reject-publish`: a publish to it is nacked, a transient failure),
/// filled with one message with id `filler`.
pub async fn full_queue(rabbit: &RabbitMq, prefix: &str) -> String {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = classic_queue(rabbit, prefix, args).await;
    rabbit
        .publisher()
        .publish(&queue, &Message::new("filler").with_message_id("filler"))
        .await
        .expect("the filler is confirmed");
    queue
}
