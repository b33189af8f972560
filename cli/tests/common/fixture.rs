//! The large DLQs of the scale tests: one per broker, filled once per test
//! run and shared by every test that walks it.
//!
//! A fixture is a named queue (`bt-cli-fixture-<n>.dlq`) or topic
//! (`bt-cli-fixture-<n>.g.dlq`) of `n` dead letters. [`rabbit`] and [`kafka`]
//! take an exclusive file lock (across test threads and test binaries), fill
//! the DLQ only when it does not hold exactly `n` letters, and return the
//! lock: a test holds it while its command walks the DLQ, because two walks
//! of one RabbitMQ queue at once would interfere. The commands the tests run
//! over a fixture leave it as it was (list, dry-run replay, purge of nothing),
//! so the next run of the suite on the same brokers reuses it.

use std::fs::File;

use backstop::publish::Publisher as _;
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology};
use futures::future::try_join_all;

/// How many letters a full fixture holds (`BACKSTOP_CLI_FIXTURE_LETTERS`,
/// default 100,000).
pub fn size() -> u64 {
    std::env::var("BACKSTOP_CLI_FIXTURE_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// An exclusive hold on a fixture; the name is its source queue or topic.
pub struct Fixture {
    /// The source queue or topic (the DLQ is `<name>.dlq` / `<name>.g.dlq`).
    pub name: String,
    /// The DLQ.
    pub dlq: String,
    _lock: File,
}

fn lock(name: &str, broker: &str) -> File {
    let path = std::env::temp_dir().join(format!("{name}.{broker}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    file.lock().unwrap();
    file
}

/// The letter number `n` of a fixture: a realistic dead letter (headers of
/// a permanent failure, a 32-hex-digit message id, a small JSON payload).
fn letter(source: &str, n: u64) -> backstop::Message {
    let id = format!("{:016x}{:016x}", n, n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    super::letter(source, &id, 4 * n + 1, 0)
}

/// Publishes `letters` to `publish` in batches of `batch` concurrent
/// publishes (their confirms pipelined).
async fn fill<F, Fut, E>(n: u64, batch: u64, publish: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Debug,
{
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        try_join_all((next..end).map(&publish)).await.unwrap();
        next = end;
    }
}

/// Publishes `n` letters of `source` to its DLQ `<source>.dlq`.
pub async fn fill_rabbit(rabbit: &RabbitMq, source: &str, n: u64) {
    let publisher = rabbit.publisher();
    let dlq = format!("{source}.dlq");
    fill(n, 2_000, |i| {
        let (publisher, dlq, m) = (publisher.clone(), dlq.clone(), letter(source, i));
        async move { publisher.publish_to_queue(&dlq, &m).await }
    })
    .await;
    publisher.close().await;
}

/// Publishes `n` letters of `source` to the topic `dlq`.
pub async fn fill_kafka(k: &Kafka, dlq: &str, source: &str, n: u64) {
    let publisher = k.publisher().unwrap();
    fill(n, 20_000, |i| {
        let (publisher, dlq, m) = (publisher.clone(), dlq.to_owned(), letter(source, i));
        async move { publisher.publish(&dlq, &m).await }
    })
    .await;
}

/// How many letters the RabbitMQ fixture holds
/// (`BACKSTOP_CLI_RABBIT_FIXTURE_LETTERS`, default [`size`]). A RabbitMQ walk
/// costs about 1 ms a letter in a debug build (a queue has no random access,
/// so every letter is received, rotated and confirmed), so `scripts/test.sh`
/// runs a smaller queue by default; the bound asserted is the same.
pub fn rabbit_size() -> u64 {
    std::env::var("BACKSTOP_CLI_RABBIT_FIXTURE_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(size)
}

/// The RabbitMQ fixture of [`rabbit_size`] letters, locked.
pub async fn rabbit(rabbit: &RabbitMq) -> Fixture {
    let n = rabbit_size();
    let name = format!("bt-cli-fixture-{n}");
    let dlq = format!("{name}.dlq");
    let lock = lock(&name, "rabbitmq");
    rabbit.declare(&Topology::quorum(&name)).await.unwrap();
    let count = u64::from(rabbit.message_count(&dlq).await.unwrap());
    if count != n {
        let started = std::time::Instant::now();
        let channel = rabbit.channel().await.unwrap();
        channel
            .queue_purge(dlq.as_str().into(), Default::default())
            .await
            .unwrap();
        let _ = channel.close(200, "OK".into()).await;
        fill_rabbit(rabbit, &name, n).await;
        eprintln!(
            "RabbitMQ fixture {dlq}: {n} letters published in {:?} (it held {count})",
            started.elapsed()
        );
    }
    Fixture {
        name,
        dlq,
        _lock: lock,
    }
}

/// The Kafka fixture of [`size`] letters, locked.
pub async fn kafka() -> Fixture {
    let n = size();
    let name = format!("bt-cli-fixture-{n}");
    let k = Kafka::new(super::brokers(), "g");
    let dlq = k.dlq_topic(&name);
    let lock = lock(&name, "kafka");
    let topics = k.topics().unwrap();
    let held: i64 = match topics.partitions(&dlq).await.unwrap() {
        Some(_) => topics.end_offsets(&dlq).await.unwrap().values().sum(),
        None => -1,
    };
    if held != i64::try_from(n).unwrap() {
        let started = std::time::Instant::now();
        if held >= 0 {
            topics.delete(&[&dlq]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        topics
            .create(&[TopicSpec::new(&dlq).partitions(4)])
            .await
            .unwrap();
        fill_kafka(&k, &dlq, &name, n).await;
        eprintln!(
            "Kafka fixture {dlq}: {n} letters published in {:?}",
            started.elapsed()
        );
    }
    Fixture {
        name,
        dlq,
        _lock: lock,
    }
}
