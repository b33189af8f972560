//! A message that kills the process, through the real `order-worker`
//! binary on RabbitMQ (`--store postgres-inbox`, concurrency 32, 10 %
//! injected transient failures, `--max-attempts 3`, a 1.5 s lease):
//!
//! 1. SIGTERM while runs are in flight charges no attempt: the worker
//!    exits cleanly and leaves no lease behind, and no key is later taken
//!    over as a crash.
//! 2. One order makes the handler call `std::process::abort()`. The test
//!    restarts the worker each time it dies. That order is counted by the
//!    takeovers of its expired leases, runs alone as a suspect, and after
//!    its 3 attempts is dead-lettered with kind `crashed` without running;
//!    every other order, its in-flight neighbours included, executes
//!    exactly once (ledger rows commit in the inbox transaction).
//!
//! `BACKSTOP_CRASH_ORDERS` sets the run size (default 200).

use std::time::{Duration, Instant};

use backstop::Message;
use backstop::publish::Publisher;
use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_tests::fault::read_dead_letters;
use backstop_tests::ledger::Ledger;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{env_usize, poll, unique};
use common::cleanup;

mod common;

const MAX_ATTEMPTS: u32 = 3;

fn order(id: &str) -> Message {
    Message::new(format!(r#"{{"order_id":"{id}","amount":7}}"#)).with_message_id(id)
}

async fn publish(rabbit: &RabbitMq, queue: &str, ids: &[String]) {
    let publisher = rabbit.publisher();
    for id in ids {
        publisher
            .publish(queue, &order(id))
            .await
            .expect("publish confirmed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_process_is_dead_lettered_as_crashed_and_only_it() {
    let n = env_usize("BACKSTOP_CRASH_ORDERS", 200).max(40);
    let started = Instant::now();
    backstop_tests::worker::binary();
    let run = unique("crash_rmq");
    let queue = run.replace('_', "-");
    let boom = format!("{run}-boom");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let log = log_path(&run);
    let max_attempts = MAX_ATTEMPTS.to_string();
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
        "0.1",
        "--concurrency",
        "32",
        "--max-attempts",
        &max_attempts,
        "--lease-ms",
        "1500",
        "--work-ms",
        "150",
        "--abort-on",
        &boom,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let mut worker = Worker::spawn(&args, &log).expect("start the worker");
    let declared = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { rabbit.message_count(&queue).await.ok() },
    )
    .await;
    assert!(
        declared.is_some(),
        "the worker did not declare {queue}: {}",
        worker.log_tail(20)
    );

    // 1. SIGTERM while runs are in flight.
    let first: Vec<String> = (0..n / 2).map(|i| format!("{run}-a-{i}")).collect();
    publish(&rabbit, &queue, &first).await;
    let busy = poll(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { (ledger.rows().await.unwrap_or(0) >= 5).then_some(()) },
    )
    .await;
    assert!(busy.is_some(), "no progress: {}", worker.log_tail(20));
    let status = worker
        .terminate(Duration::from_secs(30))
        .await
        .expect("the worker stops within 30 s of SIGTERM");
    assert!(status.success(), "SIGTERM exit: {status}");
    let held = ledger
        .count("backstop_idempotency WHERE state = 'in_progress'")
        .await
        .expect("read the store");
    assert_eq!(held, 0, "SIGTERM released every lease it held");
    let interrupted = ledger
        .count("backstop_idempotency WHERE state = 'idle'")
        .await
        .expect("read the store");
    eprintln!("SIGTERM interrupted {interrupted} runs");

    // 2. The order that aborts the process, among neighbours in flight.
    let mut worker = Worker::spawn(&args, &log).expect("restart the worker");
    let second: Vec<String> = (0..n / 2).map(|i| format!("{run}-b-{i}")).collect();
    let (before, after) = second.split_at(second.len() / 2);
    publish(&rabbit, &queue, before).await;
    publish(&rabbit, &queue, std::slice::from_ref(&boom)).await;
    publish(&rabbit, &queue, after).await;
    let valid = first.len() + second.len();
    let dlq = Topology::quorum(queue.as_str()).dlq();
    let mut crashes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut drained = false;
    while Instant::now() < deadline {
        if let Some(status) = worker.exited() {
            crashes.push(status);
            eprintln!("worker died ({status}); restarting");
            worker = Worker::spawn(&args, &log).expect("restart the worker");
        }
        if ledger.rows().await.unwrap_or(0) >= valid as i64
            && rabbit.message_count(&dlq).await.unwrap_or(0) >= 1
            && rabbit.message_count(&queue).await.unwrap_or(1) == 0
        {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = worker.terminate(Duration::from_secs(30)).await;
    let tail = worker.log_tail(30);
    let dead = read_dead_letters(
        rabbit.source(&dlq, 16).await.expect("DLQ source"),
        1,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let executions = ledger.executions().await.expect("read the ledger");
    let crashed_phase_one = ledger
        .count("backstop_idempotency WHERE crashed AND key LIKE '%-a-%'")
        .await
        .expect("read the store");
    cleanup(&rabbit, &queue).await;
    let _ = ledger.drop_schema().await;
    rabbit.close().await;
    eprintln!(
        "crash suite: {n} orders, {} crashes, {:?}",
        crashes.len(),
        started.elapsed()
    );

    assert!(drained, "not drained in time: {tail}");
    assert_eq!(
        crashes.len(),
        MAX_ATTEMPTS as usize,
        "one crash per attempt of the poison order, then it is not run again: {crashes:?}"
    );
    assert!(
        crashes.iter().all(|s| s.code().is_none()),
        "each death was the abort signal: {crashes:?}"
    );
    assert_eq!(dead.len(), 1, "exactly one dead letter: {dead:#?}");
    assert_eq!(dead[0].message_id, boom);
    assert_eq!(dead[0].kind.as_deref(), Some("crashed"), "{:?}", dead[0]);
    assert!(
        !executions.contains_key(&boom),
        "the poison order never committed"
    );
    for id in first.iter().chain(&second) {
        assert_eq!(
            executions.get(id).copied(),
            Some(1),
            "{id} executes exactly once"
        );
    }
    assert_eq!(executions.len(), valid);
    assert_eq!(
        crashed_phase_one, 0,
        "no run interrupted by SIGTERM was later taken over as a crash"
    );
    let status = status.expect("the worker stops within 30 s of SIGTERM");
    assert!(status.success(), "the last worker exited with {status}");
    let _ = std::fs::remove_file(&log);
}
