//! Helpers shared by the integration tests (each test binary uses some).
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use backstop::memory::MemoryBroker;
use backstop::publish::{PublishError, Publisher};
use backstop::{Message, RetryPolicy};
use backstop_spool::{Budget, RelayConfig};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A unique name with a readable prefix.
pub fn unique(prefix: &str) -> String {
    format!(
        "bt-spool-{prefix}-{}",
        &backstop::message::new_message_id()[..12]
    )
}

/// A small budget: 3 attempts, 10 … 50 ms backoff, 500 ms per attempt.
pub fn quick_budget() -> Budget {
    Budget::new(
        RetryPolicy::retries(2).backoff(Duration::from_millis(10), Duration::from_millis(50)),
        Duration::from_millis(500),
    )
}

/// A relay that retries quickly.
pub fn quick_relay() -> RelayConfig {
    RelayConfig::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .idle_poll(Duration::from_millis(100))
}

/// How a [`Switch`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    Down,
    Full,
    Unroutable,
}

/// An in-memory broker that can be switched off, or made to refuse.
#[derive(Clone)]
pub struct Switch {
    pub broker: MemoryBroker,
    mode: Arc<std::sync::Mutex<Mode>>,
    pub attempts: Arc<AtomicUsize>,
    pub hang: Arc<AtomicBool>,
    refused_key: Arc<std::sync::Mutex<Option<String>>>,
    tried: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// Payloads above this are refused as `TooLarge` (0: no limit).
    pub max_payload: Arc<AtomicUsize>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            broker: MemoryBroker::new(),
            mode: Arc::new(std::sync::Mutex::new(Mode::Up)),
            attempts: Arc::new(AtomicUsize::new(0)),
            hang: Arc::new(AtomicBool::new(false)),
            refused_key: Arc::default(),
            tried: Arc::default(),
            max_payload: Arc::default(),
        }
    }
}

impl Switch {
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Refuses messages of this key as `Full` (None: refuse none).
    pub fn refuse_key(&self, key: Option<&str>) {
        *self.refused_key.lock().unwrap() = key.map(str::to_owned);
    }

    /// True once a publish of message `id` reached the broker (whatever the answer).
    pub fn tried(&self, id: &str) -> bool {
        self.tried.lock().unwrap().contains(id)
    }

    pub fn ids(&self, queue: &str) -> Vec<String> {
        self.broker
            .peek(queue)
            .into_iter()
            .map(|m| m.meta.message_id)
            .collect()
    }

    pub fn messages(&self, queue: &str) -> Vec<Message> {
        self.broker.peek(queue)
    }
}

#[async_trait::async_trait]
impl Publisher for Switch {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.tried
            .lock()
            .unwrap()
            .insert(message.meta.message_id.clone());
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let refused = self.refused_key.lock().unwrap().clone();
        if refused.is_some() && refused.as_deref().map(str::as_bytes) == message.key.as_deref() {
            return Err(PublishError::Full(destination.to_owned()));
        }
        let mode = *self.mode.lock().unwrap();
        let max = self.max_payload.load(Ordering::Relaxed);
        if mode != Mode::Down && max > 0 && message.payload.len() > max {
            return Err(PublishError::TooLarge {
                size: message.payload.len(),
            });
        }
        match mode {
            Mode::Up => self.broker.publish(destination, message).await,
            Mode::Down => Err(PublishError::Unavailable("connection refused".into())),
            Mode::Full => Err(PublishError::Full(destination.to_owned())),
            Mode::Unroutable => Err(PublishError::Unroutable(destination.to_owned())),
        }
    }
}

/// `n` messages with ids `<run>-<i>`, keys `k<i % keys>`, header `seq`.
pub fn messages(run: &str, n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(format!(r#"{{"n":{i}}}"#))
                .with_message_id(format!("{run}-{i}"))
                .with_key(format!("k{}", i % keys.max(1)))
                .with_header("okey", format!("k{}", i % keys.max(1)))
                .with_header("seq", i.to_string())
        })
        .collect()
}

/// Checks that, per key (header `okey`: RabbitMQ does not carry the key),
/// the first arrival of each message is in `seq` order.
/// Returns the keys whose order broke, with the offending pair.
pub fn order_breaks(arrived: &[Message]) -> Vec<String> {
    let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut breaks = Vec::new();
    for m in arrived {
        if !seen.insert(m.meta.message_id.clone()) {
            continue; // a duplicate (at-least-once)
        }
        let key = m.header("okey").unwrap_or_default().as_bytes().to_vec();
        let Some(seq) = m.header("seq").and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if let Some(prev) = last.insert(key.clone(), seq)
            && prev > seq
        {
            breaks.push(format!(
                "key {:?}: {prev} before {seq}",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    breaks
}

/// The ids of `expected` that are not in `arrived`.
pub fn missing<'a>(
    expected: impl IntoIterator<Item = &'a str>,
    arrived: &[Message],
) -> Vec<String> {
    let got: BTreeSet<&str> = arrived.iter().map(|m| m.meta.message_id.as_str()).collect();
    expected
        .into_iter()
        .filter(|id| !got.contains(id))
        .map(str::to_owned)
        .collect()
}

/// Waits until `check` holds or `wait` passes; returns whether it held.
pub async fn eventually(wait: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

// ---- RabbitMQ ---------------------------------------------------------------

pub mod rabbit {
    use std::time::Duration;

    use backstop::Message;
    use backstop::runner::Source;
    use backstop_rabbitmq::{ConnectOptions, RabbitMq, Topology, url_from_env};

    /// Connect and confirm timeouts short enough for an outage test.
    pub fn options() -> ConnectOptions {
        ConnectOptions::default()
            .connection_name("backstop-spool-test")
            .connect_timeout(Duration::from_secs(2))
            .confirm_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// A handle to the test broker.
    pub async fn connect() -> RabbitMq {
        RabbitMq::connect_with(url_from_env(), options())
            .await
            .expect("the test broker is reachable (scripts/services/rabbitmq.sh)")
    }

    /// A fresh quorum queue.
    pub async fn queue(rabbit: &RabbitMq, prefix: &str) -> String {
        let name = super::unique(prefix);
        rabbit
            .declare(&Topology::quorum(name.clone()))
            .await
            .expect("declare the queue");
        name
    }

    /// Deletes what [`queue`] declared (best effort).
    pub async fn delete(rabbit: &RabbitMq, queue: &str) {
        use backstop_rabbitmq::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let topology = Topology::quorum(queue);
        let Ok(channel) = rabbit.channel().await else {
            return;
        };
        for q in [topology.queue().to_owned(), topology.dlq()] {
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
        let _ = channel.close(200, "OK".into()).await;
    }

    /// Reads and acks every message of `queue` until `n` distinct ids arrived or none came
    /// for `quiet`. Duplicates (at-least-once) are kept in the result but not counted toward
    /// `n`, so a resend never hides a missing message.
    pub async fn drain(rabbit: &RabbitMq, queue: &str, n: usize, quiet: Duration) -> Vec<Message> {
        let mut source = rabbit.source(queue, 500).await.expect("consume");
        let mut out = Vec::with_capacity(n);
        let mut distinct = std::collections::BTreeSet::new();
        while distinct.len() < n {
            match tokio::time::timeout(quiet, source.next()).await {
                Ok(Some(Ok(delivery))) => {
                    distinct.insert(delivery.message().meta.message_id.clone());
                    out.push(delivery.message().clone());
                    delivery.ack().await.expect("ack");
                }
                Ok(Some(Err(error))) if !error.is_fatal() => continue,
                Ok(Some(Err(error))) => panic!("source failed: {error}"),
                Ok(None) | Err(_) => break,
            }
        }
        source.close().await;
        out
    }
}

// ---- Kafka --------------------------------------------------------------------

pub mod kafka {
    use std::time::{Duration, Instant};

    use backstop::Message;
    use backstop::runner::Source;
    use backstop_kafka::{Kafka, TopicSpec};

    /// The brokers: `BACKSTOP_KAFKA_BROKERS`, else the local test broker.
    pub fn brokers() -> String {
        backstop_kafka::brokers_from_env()
    }

    /// A `Kafka` whose producer gives up on a message after `message_timeout`.
    pub fn kafka(message_timeout: Duration) -> Kafka {
        Kafka::new(brokers(), super::unique("g")).configure(|c| {
            c.session_timeout = Duration::from_secs(6);
            c.message_timeout = message_timeout;
            c.missing_topic_timeout = Duration::from_secs(2);
        })
    }

    /// A fresh topic with `partitions`.
    pub async fn topic(kafka: &Kafka, prefix: &str, partitions: i32) -> String {
        let name = super::unique(prefix);
        kafka
            .ensure_topics([TopicSpec::new(name.clone()).partitions(partitions)])
            .await
            .expect("create the topic");
        name
    }

    /// Reads `topic` from the start with a fresh group until `n` distinct ids arrived or
    /// `wait` passed. Duplicates (a record the producer resent after a lost acknowledgement,
    /// or the spool relayed after a timeout) are kept but not counted toward `n`, so they
    /// cannot end the read before the last message arrived.
    pub async fn read(kafka: &Kafka, topic: &str, n: usize, wait: Duration) -> Vec<Message> {
        let reader = Kafka::from_config({
            let mut c = kafka.config().clone();
            c.group = super::unique("reader");
            c
        });
        let mut source = reader.plain_source(&[topic], 1_000).expect("consume");
        let mut out = Vec::with_capacity(n);
        let mut distinct = std::collections::BTreeSet::new();
        let until = Instant::now() + wait;
        while distinct.len() < n && Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(500), source.next()).await {
                Ok(Some(Ok(delivery))) => {
                    distinct.insert(delivery.message().meta.message_id.clone());
                    out.push(delivery.message().clone());
                    delivery.ack().await.expect("ack");
                }
                Ok(Some(Err(error))) if !error.is_fatal() => {}
                Ok(Some(Err(error))) => panic!("source failed: {error}"),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        source.close().await;
        out
    }
}

// ---- Broker outages -----------------------------------------------------------

/// Holds a file lock that other suites disturbing the same broker take too.
pub struct Exclusive(std::fs::File);

/// Takes the outage lock `path` (waits for other holders).
pub async fn exclusive(path: &'static str) -> Exclusive {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("open the outage lock file");
        file.lock().expect("lock the outage lock file");
        Exclusive(file)
    })
    .await
    .unwrap()
}

/// Runs a command to completion, panicking with its output if it fails.
pub async fn run(program: &str, args: &[&str]) {
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!(
                "/usr/sbin:/usr/bin:/sbin:/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} {args:?} did not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{program} {args:?} took {:?}", started.elapsed());
}

/// A service script of the repository.
pub fn service_script(name: &str) -> String {
    format!(
        "{}/../../scripts/services/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Starts a service again if a test stopped it and then failed.
pub struct Restore {
    script: &'static str,
    armed: bool,
}

impl Restore {
    /// Arms a restore of `script` (`rabbitmq.sh`, `kafka.sh`).
    pub fn new(script: &'static str) -> Self {
        Restore {
            script,
            armed: true,
        }
    }

    /// The service is back: nothing to do on drop.
    pub fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("restoring {} after a failure", self.script);
            let _ = std::process::Command::new("bash")
                .arg(service_script(self.script))
                .arg("start")
                .env(
                    "PATH",
                    format!(
                        "/usr/sbin:/usr/bin:/sbin:/bin:{}",
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .status();
        }
    }
}
