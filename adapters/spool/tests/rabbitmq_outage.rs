//! 10,000 messages through a reliable RabbitMQ publisher while the broker's
//! app is stopped and started again (`rabbitmqctl stop_app` / `start_app`);
//! every message arrives, in order per key. A test binary of its own: it
//! disturbs every client of the broker, and takes the outage lock other
//! suites take too.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Message, RetryPolicy};
use backstop_spool::{Budget, ReliablePublisher, Sent, SpoolConfig};
use common::*;

const N: usize = 10_000;
const KEYS: usize = 32;

/// Publishes, per key, the messages of `range` in order; keys concurrently.
/// Returns how many were spooled.
async fn publish_phase(
    publisher: &ReliablePublisher<backstop_rabbitmq::RabbitPublisher>,
    queue: &str,
    all: &Arc<Vec<Message>>,
    range: std::ops::Range<usize>,
) -> usize {
    let tasks = (0..KEYS).map(|k| {
        let publisher = publisher.clone();
        let all = Arc::clone(all);
        let queue = queue.to_owned();
        let range = range.clone();
        tokio::spawn(async move {
            let mut spooled = 0;
            for i in range.filter(|i| i % KEYS == k) {
                match publisher.publish(&queue, &all[i]).await {
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
    let _exclusive = exclusive("/tmp/backstop-rabbitmq-outage.lock").await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rabbit = rabbit::connect().await;
    let queue = rabbit::queue(&rabbit, "outage").await;
    let confirm_timeout = Duration::from_secs(2);
    let publisher = ReliablePublisher::builder(
        rabbit.publisher(),
        SpoolConfig::new(dir.path().join("rabbit.spool")),
    )
    .budget(Budget::new(
        RetryPolicy::retries(2).backoff(Duration::from_millis(50), Duration::from_millis(500)),
        Duration::from_secs(3),
    ))
    .client_timeout(confirm_timeout)
    .relay(quick_relay())
    .open()
    .await
    .unwrap();
    let all = Arc::new(messages("rabbit", N, KEYS));
    let quarter = N / 4;

    let restore = Restore::new("rabbitmq.sh");
    // Up.
    let mut spooled = publish_phase(&publisher, &queue, &all, 0..quarter).await;
    // Going down while publishing.
    let (_, s) = tokio::join!(
        run("rabbitmqctl", &["stop_app"]),
        publish_phase(&publisher, &queue, &all, quarter..2 * quarter)
    );
    spooled += s;
    // Down.
    let down = publish_phase(&publisher, &queue, &all, 2 * quarter..3 * quarter).await;
    assert_eq!(
        down, quarter,
        "with the broker down, every message is spooled"
    );
    assert!(publisher.broker_unreachable());
    spooled += down;
    // Coming back while publishing.
    // `rabbitmq.sh start` runs start_app and waits until AMQP and the API answer.
    let script = service_script("rabbitmq.sh");
    let start = [script.as_str(), "start"];
    let (_, s) = tokio::join!(
        run("bash", &start),
        publish_phase(&publisher, &queue, &all, 3 * quarter..N)
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

    let arrived = rabbit::drain(&rabbit, &queue, N, Duration::from_secs(5)).await;
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
    rabbit::delete(&rabbit, &queue).await;
}
