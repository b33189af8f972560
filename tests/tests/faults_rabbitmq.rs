//! Fault injection on RabbitMQ through the real `order-worker` binary
//! (`--store postgres-inbox --fail-rate 0.05 --ledger …`): orders are
//! published while the worker is SIGKILLed and restarted
//! `BACKSTOP_FAULT_KILLS` times (default 3) and the broker's app is cycled
//! once (`rabbitmqctl stop_app; start_app`). Afterwards every valid order
//! has exactly one ledger row and the DLQ holds exactly the invalid and
//! poison ones. `BACKSTOP_FAULT_ORDERS` sets the run size (default 2,000).
//!
//! Takes `/tmp/backstop-rabbitmq-outage.lock` for its whole length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_tests::fault::{chaos, read_dead_letters, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::ledger::Ledger;
use backstop_tests::orders::{Kind, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::log_path;
use backstop_tests::{RABBITMQ_OUTAGE_LOCK, env_usize, outage_lock, poll, run_command, unique};
use common::cleanup;

mod common;

/// Cycles the RabbitMQ app and waits until AMQP answers again.
async fn cycle_app() {
    let started = Instant::now();
    run_command("rabbitmqctl", &["stop_app"])
        .await
        .expect("stop_app");
    run_command("rabbitmqctl", &["start_app"])
        .await
        .expect("start_app");
    let back = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { RabbitMq::connect(url_from_env()).await.ok().map(|_| ()) },
    )
    .await;
    assert!(back.is_some(), "RabbitMQ did not come back within 60 s");
    eprintln!("RabbitMQ app cycled in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_broker_restart_lose_nothing_and_repeat_nothing() {
    let n = env_usize("BACKSTOP_FAULT_ORDERS", 2_000);
    let kills = env_usize("BACKSTOP_FAULT_KILLS", 3);
    let _lock = outage_lock(RABBITMQ_OUTAGE_LOCK)
        .await
        .expect("outage lock");
    let started = Instant::now();
    backstop_tests::worker::binary();

    let run = unique("fault_rmq");
    let queue = run.replace('_', "-");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let log = log_path(&run);
    let args: Vec<String> = [
        "--broker",
        "rabbitmq",
        "--url",
        &url_from_env(),
        "--source",
        &queue,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--fail-rate",
        "0.05",
        "--concurrency",
        "32",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let mut fleet = Fleet::one(&args, &log).expect("start the worker");
    // The worker declares its topology; publish once the queue exists.
    let declared = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { rabbit.message_count(&queue).await.ok() },
    )
    .await;
    assert!(
        declared.is_some(),
        "the worker did not declare {queue}: {}",
        fleet.log_tail(20)
    );

    let orders = Arc::new(orders(&run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let mut outcome = chaos(
        &mut fleet,
        &ledger,
        Arc::new(rabbit.publisher()),
        &queue,
        orders.clone(),
        kills,
        cycle_app,
    )
    .await;

    let dlq = Topology::quorum(queue.as_str()).dlq();
    let drained = wait_drained(
        &mut fleet,
        &ledger,
        valid,
        // Above RabbitMQ's own retry interval for a dead-letter hop it did
        // not get confirmed (`dead_letter_worker_publisher_confirm_timeout`,
        // 180 s by default): a postponed copy's hop from its delay queue
        // back to the queue is such a hop, and a run's last 13 orders once
        // waited about 150 s for it. The limit is for a hang, not for speed.
        Duration::from_secs(300),
        &mut outcome.unexpected_exits,
        || async {
            rabbit.message_count(&dlq).await.unwrap_or(0) as usize >= expected_dead
                && rabbit.message_count(&queue).await.unwrap_or(1) == 0
        },
    )
    .await;
    let statuses = fleet.terminate(Duration::from_secs(30)).await;

    let dead = read_dead_letters(
        rabbit.source(&dlq, 64).await.expect("DLQ source"),
        expected_dead,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let executions = ledger.executions().await.expect("read the ledger");
    let mut counts = Counts::of_run(
        format!("rabbitmq, {n} orders"),
        &fleet,
        &ledger,
        started.elapsed(),
    )
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
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, valid, expected_dead);
    assert!(
        outcome.unexpected_exits.is_empty(),
        "the worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}
