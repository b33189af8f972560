//! Scale-out on a 3-node cluster: how many orders a second 1, 2 and 3
//! `order-worker` processes execute (`--store postgres-inbox --ledger`,
//! concurrency 10 each) from orders published beforehand, and the raw rate
//! of confirmed publishes for comparison. Start-up and group join are
//! included (timing starts when the workers are spawned). A benchmark, not
//! a test: nothing is asserted beyond every valid order having run.
//!
//! ```text
//! scripts/bench-clusters.sh                     # both clusters, one at a time
//! BACKSTOP_BENCH_BROKER=rabbitmq cargo bench -p backstop-tests --bench scale_out
//! ```
//! `BACKSTOP_BENCH_BROKER` is `rabbitmq` (a quorum queue on
//! `rabbitmq-cluster.sh`) or `kafka` (a 6-partition topic on
//! `kafka-cluster.sh`); `BACKSTOP_BENCH_N` orders per run (default 5,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology};
use backstop_tests::cluster::{kafka_brokers, rabbitmq_urls, rotated};
use backstop_tests::fleet::Fleet;
use backstop_tests::ledger::Ledger;
use backstop_tests::orders::{Kind, orders};
use backstop_tests::worker::log_path;
use backstop_tests::{env_usize, unique};

/// Publishes every order with 8 concurrent publishers; returns the wall time.
async fn publish(
    publisher: Arc<dyn Publisher>,
    destination: &str,
    run: &str,
    n: usize,
) -> Duration {
    let all = Arc::new(orders(run, n));
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..8 {
        let (publisher, all, destination) =
            (publisher.clone(), all.clone(), destination.to_owned());
        lanes.spawn(async move {
            for order in all.iter().skip(lane).step_by(8) {
                while let Err(error) = publisher.publish(&destination, &order.message).await {
                    eprintln!("publish failed (retrying): {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    while lanes.join_next().await.is_some() {}
    started.elapsed()
}

/// One run: `workers` processes on a source that already holds `n` orders.
async fn run_once(broker: &str, workers: usize, n: usize) -> (f64, f64) {
    let run = unique(&format!("scale_{broker}_{workers}"));
    let source = run.replace('_', "-");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let valid = orders(&run, n)
        .iter()
        .filter(|o| o.kind == Kind::Valid)
        .count();
    let group = format!("{source}-worker");
    let published = match broker {
        "rabbitmq" => {
            let rabbit = RabbitMq::connect(rabbitmq_urls())
                .await
                .expect("the RabbitMQ cluster");
            let secs = Duration::from_secs;
            rabbit
                .declare(
                    &Topology::quorum(source.clone())
                        .max_attempts(5)
                        .retry_tiers([secs(5), secs(30), secs(300)]),
                )
                .await
                .expect("declare");
            publish(Arc::new(rabbit.publisher()), &source, &run, n).await
        }
        _ => {
            let kafka = Kafka::new(kafka_brokers(), group.clone());
            kafka
                .ensure_topics([TopicSpec::new(source.clone()).partitions(6)])
                .await
                .expect("create the topic");
            publish(
                Arc::new(kafka.publisher().expect("publisher")),
                &source,
                &run,
                n,
            )
            .await
        }
    };
    let members = (0..workers)
        .map(|i| {
            let url = match broker {
                "rabbitmq" => rotated(&rabbitmq_urls(), i),
                _ => kafka_brokers(),
            };
            let args: Vec<String> = [
                "--broker",
                broker,
                "--url",
                &url,
                "--source",
                &source,
                "--group",
                &group,
                "--store",
                "postgres-inbox",
                "--ledger",
                ledger.url(),
                "--concurrency",
                "10",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            (args, log_path(&format!("{run}_{i}")))
        })
        .collect();
    let started = Instant::now();
    let mut fleet = Fleet::spawn(members).expect("start the workers");
    while ledger.rows().await.unwrap_or(0) < valid as i64
        && started.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let _ = fleet.terminate(Duration::from_secs(30)).await;
    fleet.remove_logs();
    let _ = ledger.drop_schema().await;
    (
        valid as f64 / took.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = std::env::var("BACKSTOP_BENCH_BROKER").unwrap_or_else(|_| "rabbitmq".to_owned());
    let n = env_usize("BACKSTOP_BENCH_N", 5_000);
    backstop_tests::worker::binary();
    println!("scale-out on the {broker} cluster, {n} orders per run");
    for workers in 1..=3 {
        let (executed, published) = run_once(&broker, workers, n).await;
        println!(
            "{broker}: {workers} worker(s): {executed:.0} executed orders/s (confirmed publishes {published:.0}/s)"
        );
        println!(
            "BENCH-ROW\tscale-out {broker} {workers} workers\t{published:.0}\t{executed:.0}\t-\t-\t-\t-"
        );
    }
}
