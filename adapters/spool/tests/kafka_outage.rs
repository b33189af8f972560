//! 10,000 messages through a reliable Kafka publisher while the broker is
//! stopped and started again (`scripts/services/kafka.sh stop|start`); every
//! message arrives, in order per key. A test binary of its own: it stops the
//! shared broker.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Message, RetryPolicy};
use backstop_kafka::KafkaPublisher;
use backstop_spool::{Budget, ReliablePublisher, Sent, SpoolConfig};
use common::*;

const N: usize = 10_000;
const KEYS: usize = 32;

/// Publishes, per key, the messages of `range` in order; keys concurrently.
/// Returns how many were spooled.
async fn publish_phase(
    publisher: &ReliablePublisher<KafkaPublisher>,
    topic: &str,
    all: &Arc<Vec<Message>>,
    range: std::ops::Range<usize>,
) -> usize {
    let tasks = (0..KEYS).map(|k| {
        let publisher = publisher.clone();
        let all = Arc::clone(all);
        let topic = topic.to_owned();
        let range = range.clone();
        tokio::spawn(async move {
            let mut spooled = 0;
            for i in range.filter(|i| i % KEYS == k) {
                match publisher.publish(&topic, &all[i]).await {
                    Ok(Sent::Spooled) => spooled += 1,
                    Ok(Sent::Confirmed) => {}
                    Err(error) => panic!("message {i} lost: {error}"),
                }
            }
            spooled
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_across_a_broker_outage() {
    init_tracing();
    let _exclusive = exclusive("/tmp/backstop-kafka-outage.lock").await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // librdkafka retries inside message.timeout.ms: one attempt that outlasts it.
    let budget = Budget::new(RetryPolicy::none(), Duration::from_secs(3));
    let kafka = kafka::kafka(Duration::from_secs(2));
    let topic = kafka::topic(&kafka, "outage", 4).await;
    let producer = kafka.publisher().unwrap();
    let publisher = ReliablePublisher::builder(
        producer.clone(),
        SpoolConfig::new(dir.path().join("kafka.spool")),
    )
    .budget(budget)
    .client_timeout(producer.message_timeout())
    .relay(quick_relay())
    .open()
    .await
    .unwrap();
    let all = Arc::new(messages("kafka", N, KEYS));
    let quarter = N / 4;
    let script = service_script("kafka.sh");
    let (stop, start) = ([script.as_str(), "stop"], [script.as_str(), "start"]);

    let restore = Restore::new("kafka.sh");
    // Up.
    let mut spooled = publish_phase(&publisher, &topic, &all, 0..quarter).await;
    // Going down while publishing.
    let (_, s) = tokio::join!(
        run("bash", &stop),
        publish_phase(&publisher, &topic, &all, quarter..2 * quarter)
    );
    spooled += s;
    // Down.
    let down = publish_phase(&publisher, &topic, &all, 2 * quarter..3 * quarter).await;
    assert_eq!(
        down, quarter,
        "with the broker down, every message is spooled"
    );
    assert!(publisher.broker_unreachable());
    spooled += down;
    // Coming back while publishing.
    let (_, s) = tokio::join!(
        run("bash", &start),
        publish_phase(&publisher, &topic, &all, 3 * quarter..N)
    );
    restore.done();
    spooled += s;
    let published_in = started.elapsed();

    publisher
        .flush(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("the relay did not drain the spool: {e}"));
    let relayed_in = started.elapsed();
    publisher.close().await.unwrap();
    producer.close().await.unwrap();

    let arrived = kafka::read(&kafka, &topic, N, Duration::from_secs(60)).await;
    let lost = missing(all.iter().map(|m| m.meta.message_id.as_str()), &arrived);
    eprintln!(
        "{N} published in {published_in:?} ({spooled} spooled), spool drained after {relayed_in:?}, \
         {} arrived ({} duplicates), {} missing, total {:?}",
        arrived.len(),
        arrived.len() + lost.len() - N,
        lost.len(),
        started.elapsed()
    );
    assert!(
        lost.is_empty(),
        "missing: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(spooled >= quarter, "the outage was exercised");
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
    let _ = kafka.topics().unwrap().delete(&[&topic]).await;
}
