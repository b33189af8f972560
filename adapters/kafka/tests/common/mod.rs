//! Shared helpers of the Kafka integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::Message;
use backstop::delivery::Delivery;
use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop_kafka::{Kafka, KafkaPublisher, KafkaSource, RetryTiers, TopicSpec};

/// The brokers: `BACKSTOP_KAFKA_BROKERS`, else the local test broker.
pub fn brokers() -> String {
    backstop_kafka::brokers_from_env()
}

/// A unique name with a readable prefix.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bt-{prefix}-{nanos:x}-{:04x}", rand_u16())
}

fn rand_u16() -> u16 {
    let id = backstop::message::new_message_id();
    u16::from_str_radix(&id[..4], 16).unwrap()
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A `Kafka` for `group` with short timeouts for tests.
pub fn kafka(group: &str) -> Kafka {
    init_tracing();
    Kafka::new(brokers(), group).configure(|c| {
        c.session_timeout = Duration::from_secs(6);
        c.auto_commit_interval = Duration::from_millis(200);
        c.message_timeout = Duration::from_secs(10);
        c.missing_topic_timeout = Duration::from_secs(2);
        c.retry_tiers = RetryTiers::new([Duration::from_secs(2), Duration::from_secs(4)]);
        if let Ok(debug) = std::env::var("BACKSTOP_KAFKA_DEBUG") {
            c.consumer_properties.insert("debug".into(), debug);
        }
    })
}

/// Creates `topic` with `partitions`, its DLQ and retry topics for the kafka's group.
pub async fn topic(kafka: &Kafka, prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    kafka
        .ensure_topics([TopicSpec::new(name.clone()).partitions(partitions)])
        .await
        .unwrap();
    name
}

/// `n` messages with ids `<prefix>-<i>`, keys `k<i % keys>`, header `seq`.
pub fn messages(prefix: &str, n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(format!(r#"{{"n":{i}}}"#))
                .with_message_id(format!("{prefix}-{i}"))
                .with_key(format!("k{}", i % keys.max(1)))
                .with_header("seq", i.to_string())
        })
        .collect()
}

/// Publishes every message concurrently (in order per key is not needed) and waits.
pub async fn publish_all(publisher: &KafkaPublisher, topic: &str, messages: &[Message]) {
    let futures = messages.iter().map(|m| publisher.publish(topic, m));
    for result in futures::future::join_all(futures).await {
        result.unwrap();
    }
}

/// Publishes in order, one after the other (keeps per-key order).
pub async fn publish_in_order(publisher: &KafkaPublisher, topic: &str, messages: &[Message]) {
    for chunk in messages.chunks(500) {
        // The idempotent producer keeps order within a partition even with
        // several requests in flight, so a chunk may be awaited together.
        let futures = chunk.iter().map(|m| publisher.publish(topic, m));
        for result in futures::future::join_all(futures).await {
            result.unwrap();
        }
    }
}

/// The next delivery within `wait`, skipping non-fatal errors.
pub async fn next(source: &mut KafkaSource, wait: Duration) -> Option<Delivery> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, source.next()).await {
            Ok(Some(Ok(d))) => return Some(d),
            Ok(Some(Err(e))) if !e.is_fatal() => continue,
            Ok(Some(Err(e))) => panic!("source failed: {e}"),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Reads and acks until every id in `expected` was seen or `wait` passed; returns ids seen (with counts).
pub async fn drain(
    source: &mut KafkaSource,
    expected: &BTreeSet<String>,
    wait: Duration,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    let until = Instant::now() + wait;
    while !expected.iter().all(|id| seen.contains_key(id)) && Instant::now() < until {
        let Some(d) = next(source, Duration::from_millis(500)).await else {
            continue;
        };
        *seen.entry(d.message().meta.message_id.clone()).or_insert(0) += 1;
        d.ack().await.unwrap();
    }
    seen
}

/// The ids of `messages`.
pub fn ids(messages: &[Message]) -> BTreeSet<String> {
    messages.iter().map(|m| m.meta.message_id.clone()).collect()
}

/// Waits until `check` holds or `wait` passes; returns whether it held.
pub async fn eventually(wait: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Waits until the group's committed offsets reach `expected` (per partition) or `wait` passes.
pub async fn committed_eventually(
    kafka: &Kafka,
    topic: &str,
    expected: &BTreeMap<i32, i64>,
    wait: Duration,
) -> BTreeMap<i32, Option<i64>> {
    let until = Instant::now() + wait;
    loop {
        let committed = kafka.committed_offsets(topic).await.unwrap();
        let reached = expected
            .iter()
            .all(|(p, o)| committed.get(p).copied().flatten() == Some(*o));
        if reached || Instant::now() >= until {
            return committed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A set shared with handlers.
pub type Shared<T> = Arc<Mutex<T>>;

/// A new shared value.
pub fn shared<T: Default>() -> Shared<T> {
    Arc::new(Mutex::new(T::default()))
}

/// Unused spec helper to keep the import used in all binaries.
pub fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec::new(name).partitions(partitions)
}

/// A runner in the background.
pub struct Worker {
    stop: backstop::CancellationToken,
    handle: tokio::task::JoinHandle<Result<backstop::Summary, backstop::runner::RunError>>,
}

/// Runs `stack` over `source` with `concurrency` in the background.
pub fn run(source: KafkaSource, stack: backstop::Stack, concurrency: usize) -> Worker {
    let stop = backstop::CancellationToken::new();
    let runner = backstop::Runner::new(source, stack)
        .concurrency(concurrency)
        .shutdown_deadline(Duration::from_secs(10))
        .with_shutdown(stop.clone());
    Worker {
        stop,
        handle: tokio::spawn(runner.run()),
    }
}

impl Worker {
    /// Shuts the runner down and returns its summary.
    pub async fn stop(self) -> backstop::Summary {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap()
    }

    /// Shuts down a runner that halted on a letter it could never write;
    /// returns why and its summary.
    pub async fn stop_halted(self) -> (String, backstop::Summary) {
        self.stop.cancel();
        match self.handle.await.unwrap() {
            Err(backstop::runner::RunError::Halted { reason, summary }) => (reason, summary),
            other => panic!("the runner did not halt: {other:?}"),
        }
    }
}

/// Reads every message of `topic` (from the start, a throwaway group) until
/// `n` distinct ids arrived or `wait` passed. Duplicates (a redelivery after
/// a rebalance or a session expiry) are kept but not counted toward `n`, so
/// they cannot end the read before the last message arrived; a test that
/// means "exactly once" says so with its own assertion.
pub async fn read_topic(
    brokers_kafka: &Kafka,
    topic: &str,
    n: usize,
    wait: Duration,
) -> Vec<Message> {
    let reader = Kafka::from_config({
        let mut c = brokers_kafka.config().clone();
        c.group = unique("reader");
        c.exactly_once = None;
        c.ordered_retries = false;
        c
    });
    let mut source = reader.plain_source(&[topic], 64).unwrap();
    let mut got = Vec::new();
    let mut distinct = BTreeSet::new();
    let until = Instant::now() + wait;
    while distinct.len() < n && Instant::now() < until {
        if let Some(d) = next(&mut source, Duration::from_millis(300)).await {
            distinct.insert(d.message().meta.message_id.clone());
            got.push(d.message().clone());
            d.ack().await.unwrap();
        }
    }
    source.close().await;
    got
}
