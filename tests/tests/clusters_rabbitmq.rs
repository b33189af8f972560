//! RabbitMQ node loss on the 3-node cluster (`scripts/services/rabbitmq-cluster.sh`,
//! run by the `clusters` step of `scripts/test.sh`): three `order-worker`
//! processes (`--store postgres-inbox --fail-rate 0.05`) consume one quorum
//! queue (a member on each node), each connected to another node first;
//! orders are published with confirms while a random worker is SIGKILLed
//! `BACKSTOP_CLUSTER_KILLS` times (default 2) and the node leading the queue
//! is killed with kill -9 and restarted. Afterwards every valid order has
//! exactly one ledger row, the DLQ holds exactly the invalid and poison ones,
//! and nothing is lost. `BACKSTOP_CLUSTER_ORDERS` sets the size (default
//! 5,000). Every test here is named `on_a_cluster_*`: the main test step
//! skips them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_rabbitmq::{RabbitMq, Topology};
use backstop_tests::cluster::{self, rabbitmq_urls, rotated};
use backstop_tests::fault::{chaos, read_dead_letters, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::ledger::Ledger;
use backstop_tests::orders::{Kind, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::log_path;
use backstop_tests::{poll, unique};
use common::cleanup;

mod common;

const WORKERS: usize = 3;
const SCRIPT: &str = "rabbitmq-cluster.sh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_rabbitmq_node_loss_and_worker_kills_lose_nothing() {
    let n = cluster::orders();
    let kills = cluster::kills();
    let started = Instant::now();
    backstop_tests::worker::binary();
    let urls = rabbitmq_urls();

    let run = unique("cluster_rmq");
    let queue = run.replace('_', "-");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let members: Vec<(Vec<String>, std::path::PathBuf)> = (0..WORKERS)
        .map(|i| {
            let args: Vec<String> = [
                "--broker",
                "rabbitmq",
                "--url",
                &rotated(&urls, i),
                "--source",
                &queue,
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
            (args, log_path(&format!("{run}_{i}")))
        })
        .collect();
    let rabbit = RabbitMq::connect(urls.clone())
        .await
        .expect("the cluster is up (scripts/services/rabbitmq-cluster.sh start)");
    let mut fleet = Fleet::spawn(members).expect("start the workers");
    let declared = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { rabbit.message_count(&queue).await.ok() },
    )
    .await;
    assert!(
        declared.is_some(),
        "the workers did not declare {queue}: {}",
        fleet.log_tail(20)
    );
    let members = queue_members(&queue).await;
    eprintln!("quorum queue {queue}: members {members:?}");
    assert_eq!(members.len(), 3, "a member on each node: {members:?}");

    let orders = Arc::new(orders(&run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let leader_killed = Arc::new(std::sync::Mutex::new(None));
    let killed = Arc::clone(&leader_killed);
    let queue_name = queue.clone();
    let mut outcome = chaos(
        &mut fleet,
        &ledger,
        Arc::new(rabbit.publisher()),
        &queue,
        orders.clone(),
        kills,
        move || async move {
            let leader = cluster::rabbitmq_queue_leader(&queue_name)
                .await
                .expect("the queue has a leader");
            eprintln!("killing node {leader}, the leader of {queue_name}");
            if let Ok(mut k) = killed.lock() {
                *k = Some(leader);
            }
            cluster::kill_and_restart(SCRIPT, leader, Duration::from_secs(5)).await;
        },
    )
    .await;

    let dlq = Topology::quorum(queue.as_str()).dlq();
    let drained = wait_drained(
        &mut fleet,
        &ledger,
        valid,
        Duration::from_secs(180),
        &mut outcome.unexpected_exits,
        || async {
            rabbit.message_count(&dlq).await.unwrap_or(0) as usize >= expected_dead
                && rabbit.message_count(&queue).await.unwrap_or(1) == 0
        },
    )
    .await;
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let leader_after = cluster::rabbitmq_queue_leader(&queue).await;

    let dead = read_dead_letters(
        rabbit.source(&dlq, 64).await.expect("DLQ source"),
        expected_dead,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let executions = ledger.executions().await.expect("read the ledger");
    let killed_leader = leader_killed.lock().ok().and_then(|k| *k);
    let broker = format!(
        "rabbitmq cluster, {n} orders, {WORKERS} workers, leader node {killed_leader:?} killed (leader after: {leader_after:?})"
    );
    let mut counts = Counts::of_run(broker, &fleet, &ledger, started.elapsed())
        .await
        .with_chaos(&outcome);
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");

    cleanup(&rabbit, &queue).await;
    let _ = ledger.drop_schema().await;
    rabbit.close().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert!(killed_leader.is_some(), "the leader's node was killed");
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    // Extra DLQ copies of one id are reported above, not failed.
    counts.assert_contract(&problems, valid, expected_dead);
    assert!(
        outcome.unexpected_exits.is_empty(),
        "a worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}

/// The members of the quorum queue `queue` (node names), from the management API.
async fn queue_members(queue: &str) -> Vec<String> {
    let url = format!("http://127.0.0.1:15681/api/queues/%2f/{queue}");
    let body = backstop_tests::run_command("curl", &["-fsS", "-m", "5", "-u", "guest:guest", &url])
        .await
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| {
            j.get("members").and_then(|m| m.as_array()).map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}
