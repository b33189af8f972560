//! Kafka broker loss on the 3-node KRaft cluster
//! (`scripts/services/kafka-cluster.sh`, run by the `clusters` step of
//! `scripts/test.sh`; topics with replication 3 and `min.insync.replicas` 2,
//! producers with `acks=all`):
//!
//! * broker loss: three `order-worker` processes with static membership
//!   (`--instance-id`) consume one 4-partition topic while a random worker
//!   is SIGKILLed `BACKSTOP_CLUSTER_KILLS` times (default 2) and the broker
//!   leading most partitions is killed with kill -9 and restarted;
//! * quorum loss: two of the three brokers down, a `ReliablePublisher` gets
//!   no confirm and spools; the brokers return, the spool drains, a worker
//!   executes every order once.
//!
//! * rebalance storm: two workers without a fixed instance id consume a
//!   6-partition topic while, for 30 s, another worker joins every 5 s and
//!   the oldest joiner leaves (SIGTERM, a clean leave); the rebalances the
//!   two long-lived workers took part in are counted and asserted.
//!
//! Afterwards every valid order has exactly one ledger row, the DLQ holds
//! exactly the invalid and poison ones (extra copies of an id are reported,
//! not failed), nothing is lost. `BACKSTOP_CLUSTER_ORDERS` sets the size of
//! the broker-loss run (default 5,000). The tests take one lock: they kill
//! the same brokers. Every test here is named `on_a_cluster_*`: the main
//! test step skips them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::RetryPolicy;
use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_spool::{Budget, ReliablePublisher, Sent, SpoolConfig};
use backstop_tests::cluster::{self, kafka_brokers};
use backstop_tests::fault::{DeadLetter, chaos, read_dead_letters, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::ledger::Ledger;
use backstop_tests::orders::{Kind, Order, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{outage_lock, unique};

const SCRIPT: &str = "kafka-cluster.sh";
const LOCK: &str = "/tmp/backstop-kafka-cluster.lock";

/// The worker's arguments on the cluster (`instance`: its static member id).
fn worker_args(topic: &str, group: &str, ledger: &Ledger, instance: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--broker",
        "kafka",
        "--url",
        &kafka_brokers(),
        "--source",
        topic,
        "--group",
        group,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--fail-rate",
        "0.05",
        "--concurrency",
        "16",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(id) = instance {
        args.extend(["--instance-id".to_owned(), id.to_owned()]);
    }
    args
}

/// The broker (node id, 1..3) leading most partitions of `topic`.
async fn leading_broker(topic: &str) -> Option<usize> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = backstop_kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .ok()?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .ok()?;
        let mut leaders: HashMap<i32, usize> = HashMap::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                *leaders.entry(p.leader()).or_default() += 1;
            }
        }
        leaders
            .into_iter()
            .filter(|(id, _)| *id > 0)
            .max_by_key(|(_, n)| *n)
            .and_then(|(id, _)| usize::try_from(id).ok())
    })
    .await
    .ok()
    .flatten()
}

/// The replicas per partition of `topic` and its `min.insync.replicas`.
async fn durability(kafka: &Kafka, topic: &str) -> (Vec<usize>, Option<String>) {
    let name = topic.to_owned();
    let replicas = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = backstop_kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .ok()?;
        let metadata = consumer
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.replicas().len()))
                .collect::<Vec<_>>(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    let configs = kafka
        .topics()
        .expect("admin client")
        .configs(topic)
        .await
        .unwrap_or_default();
    (replicas, configs.get("min.insync.replicas").cloned())
}

/// Reads the DLQ of `topic` with a group of its own.
async fn dead_letters(kafka: &Kafka, topic: &str, group: &str, expected: usize) -> Vec<DeadLetter> {
    let reader = Kafka::new(kafka_brokers(), format!("{group}-dlq-reader"));
    read_dead_letters(
        reader
            .plain_source(&[kafka.dlq_topic(topic).as_str()], 64)
            .expect("DLQ source"),
        expected,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await
}

/// When letters are missing, for the diagnosis: lists the letters a
/// `read_uncommitted` reader finds that the `read_committed` one did not
/// (written in a transaction still open, or aborted and not written again).
async fn uncommitted_letters(kafka: &Kafka, topic: &str, group: &str, committed: &[DeadLetter]) {
    let reader = Kafka::new(kafka_brokers(), format!("{group}-dlq-uncommitted"))
        .set("isolation.level", "read_uncommitted");
    let all = read_dead_letters(
        reader
            .plain_source(&[kafka.dlq_topic(topic).as_str()], 64)
            .expect("DLQ source"),
        usize::MAX,
        Duration::from_secs(3),
        Duration::from_secs(20),
    )
    .await;
    let seen: std::collections::HashSet<_> = committed.iter().map(|d| &d.message_id).collect();
    let uncommitted: Vec<_> = all
        .iter()
        .filter(|d| !seen.contains(&d.message_id))
        .map(|d| d.message_id.as_str())
        .collect();
    eprintln!(
        "DLQ read uncommitted: {} letters ({} committed); not committed: {uncommitted:?}",
        all.len(),
        committed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_kafka_broker_loss_and_worker_kills_lose_nothing() {
    const WORKERS: usize = 3;
    let n = cluster::orders();
    let kills = cluster::kills();
    let _lock = outage_lock(LOCK).await.expect("cluster lock");
    let started = Instant::now();
    backstop_tests::worker::binary();

    let run = unique("cluster_kafka");
    let topic = run.replace('_', "-");
    let group = format!("{topic}-worker");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let kafka = Kafka::new(kafka_brokers(), group.clone());
    // The worker's own topic spec (order-worker.rs): the helpers pick
    // replication 3 and min.insync.replicas 2 on 3 brokers.
    kafka
        .ensure_topics([TopicSpec::new(topic.clone()).partitions(4)])
        .await
        .expect("create the topics");
    let (replicas, min_isr) = durability(&kafka, &topic).await;
    assert_eq!(replicas, vec![3; 4], "replication 3 on every partition");
    assert_eq!(min_isr.as_deref(), Some("2"));
    let members = (0..WORKERS)
        .map(|i| {
            let id = format!("{topic}-{i}");
            (
                worker_args(&topic, &group, &ledger, Some(&id)),
                log_path(&format!("{run}_{i}")),
            )
        })
        .collect();
    let mut fleet = Fleet::spawn(members).expect("start the workers");

    let orders = Arc::new(orders(&run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let killed = Arc::new(std::sync::Mutex::new(None));
    let killed_in = Arc::clone(&killed);
    let topic_name = topic.clone();
    let mut outcome = chaos(
        &mut fleet,
        &ledger,
        Arc::new(kafka.publisher().expect("publisher")),
        &topic,
        orders.clone(),
        kills,
        move || async move {
            let leader = leading_broker(&topic_name)
                .await
                .expect("the topic has leaders");
            eprintln!("killing broker {leader}, the leader of most partitions of {topic_name}");
            if let Ok(mut k) = killed_in.lock() {
                *k = Some(leader);
            }
            cluster::kill_and_restart(SCRIPT, leader, Duration::from_secs(5)).await;
        },
    )
    .await;

    let drained = wait_drained(
        &mut fleet,
        &ledger,
        valid,
        Duration::from_secs(180),
        &mut outcome.unexpected_exits,
        || async { true },
    )
    .await;
    let dead = dead_letters(&kafka, &topic, &group, expected_dead).await;
    if dead.len() < expected_dead {
        uncommitted_letters(&kafka, &topic, &group, &dead).await;
    }
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let executions = ledger.executions().await.expect("read the ledger");
    let killed = killed.lock().ok().and_then(|k| *k);
    let broker =
        format!("kafka cluster, {n} orders, {WORKERS} static workers, broker {killed:?} killed");
    let mut counts = Counts::of_run(broker, &fleet, &ledger, started.elapsed())
        .await
        .with_chaos(&outcome);
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert!(killed.is_some(), "a broker was killed");
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, valid, expected_dead);
    assert!(
        outcome.unexpected_exits.is_empty(),
        "a worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    // A stuck transactional producer exits and is restarted (librdkafka
    // can block after losing its coordinator); more exits than workers
    // would be a watchdog firing falsely.
    assert!(
        counts.stuck <= WORKERS,
        "{} stuck-producer exits for {WORKERS} workers and one broker loss",
        counts.stuck
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}

/// Publishes `orders` one after the other; returns how many were spooled.
async fn publish_reliably(
    publisher: &ReliablePublisher<backstop_kafka::KafkaPublisher>,
    topic: &str,
    orders: &[Order],
) -> usize {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..8 {
        let publisher = publisher.clone();
        let topic = topic.to_owned();
        let mine: Vec<Order> = orders.iter().skip(lane).step_by(8).cloned().collect();
        lanes.spawn(async move {
            let mut spooled = 0;
            for order in mine {
                match publisher.publish(&topic, &order.message).await {
                    Ok(Sent::Spooled) => spooled += 1,
                    Ok(Sent::Confirmed) => {}
                    Err(error) => panic!("order {} lost: {error}", order.message_id),
                }
            }
            spooled
        });
    }
    let mut spooled = 0;
    while let Some(done) = lanes.join_next().await {
        spooled += done.expect("a publishing lane");
    }
    spooled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_kafka_quorum_loss_spools_and_the_spool_drains() {
    let n = cluster::orders().min(1_500);
    let _lock = outage_lock(LOCK).await.expect("cluster lock");
    let started = Instant::now();
    backstop_tests::worker::binary();
    let run = unique("cluster_quorum");
    let topic = run.replace('_', "-");
    let group = format!("{topic}-worker");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let kafka = Kafka::new(kafka_brokers(), group.clone()).configure(|c| {
        c.message_timeout = Duration::from_secs(3);
    });
    kafka
        .ensure_topics([TopicSpec::new(topic.clone()).partitions(4)])
        .await
        .expect("create the topics");
    let dir = tempfile::tempdir().expect("a spool folder");
    let producer = kafka.publisher().expect("publisher");
    let publisher = ReliablePublisher::builder(
        producer.clone(),
        SpoolConfig::new(dir.path().join("orders.spool")),
    )
    // librdkafka retries inside message.timeout.ms: one attempt that outlasts it.
    .budget(Budget::new(RetryPolicy::none(), Duration::from_secs(4)))
    .client_timeout(producer.message_timeout())
    .open()
    .await
    .expect("open the spool");
    let orders = orders(&run, n);
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let (up, rest) = orders.split_at(n / 3);
    let (down, after) = rest.split_at(n / 3);

    let spooled_up = publish_reliably(&publisher, &topic, up).await;
    // Two of three brokers (and controllers) down: no partition has
    // min.insync.replicas in sync, so no write is confirmed.
    cluster::service(SCRIPT, &["kill", "2"]).await;
    cluster::service(SCRIPT, &["kill", "3"]).await;
    let spooled_down = publish_reliably(&publisher, &topic, down).await;
    let back = Instant::now();
    cluster::service(SCRIPT, &["restart", "2"]).await;
    cluster::service(SCRIPT, &["restart", "3"]).await;
    let spooled_after = publish_reliably(&publisher, &topic, after).await;
    publisher
        .flush(Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("the spool did not drain: {e}"));
    let drained_after = back.elapsed();
    publisher.close().await.expect("close the spool");
    let _ = producer.close().await;

    let mut fleet = Fleet::one(&worker_args(&topic, &group, &ledger, None), &log_path(&run))
        .expect("start the worker");
    let mut unexpected = Vec::new();
    let drained = wait_drained(
        &mut fleet,
        &ledger,
        valid,
        Duration::from_secs(180),
        &mut unexpected,
        || async { true },
    )
    .await;
    let dead = dead_letters(&kafka, &topic, &group, expected_dead).await;
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let executions = ledger.executions().await.expect("read the ledger");
    let broker = format!(
        "kafka cluster, quorum loss, {n} orders: {spooled_down} of {} spooled while 2 of 3 brokers were down \
         ({spooled_up} before, {spooled_after} after), spool drained {drained_after:.1?} after the brokers returned",
        down.len()
    );
    let mut counts = Counts {
        acknowledged: n,
        ..Counts::of_run(broker, &fleet, &ledger, started.elapsed()).await
    };
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert_eq!(
        spooled_down,
        down.len(),
        "with 2 of 3 brokers down, nothing is confirmed"
    );
    counts.assert_contract(&problems, valid, expected_dead);
    assert!(unexpected.is_empty(), "the worker exited: {unexpected:#?}");
    assert_stopped(statuses);
    fleet.remove_logs();
}

/// Partition assignments a worker logged (`partitions assigned`, one per
/// rebalance it took part in).
fn assignments(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .count()
}

/// What the storm did.
#[derive(Debug, Default)]
struct Storm {
    joins: usize,
    leaves: usize,
    unclean_leaves: Vec<String>,
}

/// For `length`, starts a worker every `every` and stops (SIGTERM) the
/// oldest of the joiners once two run; stops the rest at the end.
async fn storm(args: Vec<String>, run: String, length: Duration, every: Duration) -> Storm {
    let started = Instant::now();
    let mut out = Storm::default();
    let mut joined: std::collections::VecDeque<(Worker, std::path::PathBuf)> =
        std::collections::VecDeque::new();
    while started.elapsed() < length {
        let log = log_path(&format!("{run}_storm{}", out.joins));
        joined.push_back((Worker::spawn(&args, &log).expect("a joining worker"), log));
        out.joins += 1;
        eprintln!(
            "storm: worker {} joined at {:.1?}",
            out.joins,
            started.elapsed()
        );
        tokio::time::sleep(every).await;
        if joined.len() >= 2
            && let Some((mut worker, log)) = joined.pop_front()
        {
            out.leaves += 1;
            let status = worker.terminate(Duration::from_secs(30)).await;
            if !status.is_some_and(|s| s.success()) {
                out.unclean_leaves
                    .push(format!("{status:?}: {}", worker.log_tail(5)));
            }
            let _ = std::fs::remove_file(&log);
        }
    }
    while let Some((mut worker, log)) = joined.pop_front() {
        out.leaves += 1;
        let status = worker.terminate(Duration::from_secs(30)).await;
        if !status.is_some_and(|s| s.success()) {
            out.unclean_leaves
                .push(format!("{status:?}: {}", worker.log_tail(5)));
        }
        let _ = std::fs::remove_file(&log);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_kafka_rebalance_storm_loses_nothing() {
    let n = cluster::orders().min(2_000);
    let _lock = outage_lock(LOCK).await.expect("cluster lock");
    let started = Instant::now();
    backstop_tests::worker::binary();
    let run = unique("cluster_storm");
    let topic = run.replace('_', "-");
    let group = format!("{topic}-worker");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let kafka = Kafka::new(kafka_brokers(), group.clone());
    kafka
        .ensure_topics([TopicSpec::new(topic.clone()).partitions(6)])
        .await
        .expect("create the topics");
    let args = worker_args(&topic, &group, &ledger, None);
    let logs: Vec<std::path::PathBuf> = (0..2).map(|i| log_path(&format!("{run}_{i}"))).collect();
    let mut fleet = Fleet::spawn(logs.iter().map(|l| (args.clone(), l.clone())).collect())
        .expect("start the workers");
    let orders = Arc::new(orders(&run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let result = Arc::new(std::sync::Mutex::new(None));
    let result_in = Arc::clone(&result);
    let storm_args = args.clone();
    let storm_run = run.clone();
    let mut outcome = chaos(
        &mut fleet,
        &ledger,
        Arc::new(kafka.publisher().expect("publisher")),
        &topic,
        orders.clone(),
        0,
        move || async move {
            let done = storm(
                storm_args,
                storm_run,
                Duration::from_secs(30),
                Duration::from_secs(5),
            )
            .await;
            if let Ok(mut r) = result_in.lock() {
                *r = Some(done);
            }
        },
    )
    .await;
    let drained = wait_drained(
        &mut fleet,
        &ledger,
        valid,
        Duration::from_secs(180),
        &mut outcome.unexpected_exits,
        || async { true },
    )
    .await;
    let dead = dead_letters(&kafka, &topic, &group, expected_dead).await;
    let rebalances = logs.iter().map(|l| assignments(l)).max().unwrap_or(0);
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let storm = result
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .expect("the storm ran");
    let executions = ledger.executions().await.expect("read the ledger");
    let broker = format!(
        "kafka cluster, rebalance storm 30 s, {n} orders: {} joins, {} clean leaves, {rebalances} rebalances seen by the long-lived workers",
        storm.joins, storm.leaves
    );
    // Not `with_chaos`: the storm is the schedule's event, not a broker restart.
    let mut counts = Counts {
        acknowledged: outcome.acknowledged,
        publish_retries: outcome.publish_retries,
        ..Counts::of_run(broker, &fleet, &ledger, started.elapsed()).await
    };
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, valid, expected_dead);
    assert!(storm.joins >= 5, "{storm:?}");
    assert!(
        storm.unclean_leaves.is_empty(),
        "{:#?}",
        storm.unclean_leaves
    );
    // Every join moves partitions away from the long-lived workers.
    assert!(
        rebalances >= storm.joins,
        "{rebalances} rebalances for {} joins and {} leaves",
        storm.joins,
        storm.leaves
    );
    assert!(
        outcome.unexpected_exits.is_empty(),
        "a worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}
