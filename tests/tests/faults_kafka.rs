//! Fault injection on Kafka through the real `order-worker` binary
//! (`--store postgres-inbox --fail-rate 0.05 --ledger …`): orders are
//! published while the worker is SIGKILLed and restarted
//! `BACKSTOP_FAULT_KILLS` times (default 3) and the broker is restarted once
//! (`scripts/services/kafka.sh restart`). Afterwards every valid order has
//! exactly one ledger row and the DLQ (`<topic>.<group>.dlq`) holds exactly
//! the invalid and poison ones. `BACKSTOP_FAULT_ORDERS` sets the run size
//! (default 2,000).
//!
//! A SIGKILLed consumer leaves the group only when its session times out
//! (the adapter's default: 10 s), so each kill stalls its partitions that
//! long. Takes `/tmp/backstop-kafka-outage.lock` for its whole length.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_kafka::{Kafka, TopicSpec};
use backstop_tests::fault::{chaos, read_dead_letters, read_messages, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::ledger::Ledger;
use backstop_tests::orders::{Kind, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::log_path;
use backstop_tests::{KAFKA_OUTAGE_LOCK, env_usize, outage_lock, run_command, unique};

fn brokers() -> String {
    backstop_kafka::brokers_from_env()
}

/// Restarts the broker with the service script (it waits until metadata works again).
async fn restart_kafka() {
    let started = Instant::now();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services/kafka.sh");
    run_command("bash", &[script, "restart"])
        .await
        .expect("kafka.sh restart");
    eprintln!("Kafka restarted in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_broker_restart_lose_nothing_and_repeat_nothing() {
    let n = env_usize("BACKSTOP_FAULT_ORDERS", 2_000);
    let kills = env_usize("BACKSTOP_FAULT_KILLS", 3);
    let _lock = outage_lock(KAFKA_OUTAGE_LOCK).await.expect("outage lock");
    let started = Instant::now();
    backstop_tests::worker::binary();

    let run = unique("fault_kafka");
    let topic = run.replace('_', "-");
    let group = format!("{topic}-worker");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let log = log_path(&run);
    let events = format!("{topic}.events");
    let kafka = Kafka::new(brokers(), group.clone());
    // The worker's own topic spec (order-worker.rs), so publishing can start at once.
    kafka
        .ensure_topics([TopicSpec::new(topic.clone()).partitions(4)])
        .await
        .expect("create the topics");
    let args: Vec<String> = [
        "--broker",
        "kafka",
        "--url",
        &brokers(),
        "--source",
        &topic,
        "--group",
        &group,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--fail-rate",
        "0.05",
        "--concurrency",
        "32",
        // Exactly-once hand-off (the order worker's default on Kafka) with
        // a transactional id its restarts reuse.
        "--instance-id",
        "fault-worker",
        // Two events per order, committed with the order's offset.
        "--events",
        &events,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut fleet = Fleet::one(&args, &log).expect("start the worker");

    let orders = Arc::new(orders(&run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let mut outcome = chaos(
        &mut fleet,
        &ledger,
        Arc::new(kafka.publisher().expect("publisher")),
        &topic,
        orders.clone(),
        kills,
        restart_kafka,
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
    // The dead letters are read by a group of their own before the worker
    // stops: the last ones may still be in flight.
    let reader = Kafka::new(brokers(), format!("{group}-dlq-reader"));
    let dead = read_dead_letters(
        reader
            .plain_source(&[kafka.dlq_topic(&topic).as_str()], 64)
            .expect("DLQ source"),
        expected_dead,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await;
    let published = read_messages(
        Kafka::new(brokers(), format!("{group}-events-reader"))
            .plain_source(&[events.as_str()], 64)
            .expect("events source"),
        2 * valid,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await;
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let executions = ledger.executions().await.expect("read the ledger");
    let mut counts = Counts::of_run(
        format!("kafka, {n} orders"),
        &fleet,
        &ledger,
        started.elapsed(),
    )
    .await
    .with_chaos(&outcome);
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");
    // Every valid order's two events once each, as a read_committed reader
    // sees them; none for the others.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for event in &published {
        let body: serde_json::Value =
            serde_json::from_slice(&event.payload).expect("an event is JSON");
        let key = (
            body["order_id"].as_str().unwrap_or_default().to_owned(),
            body["event"].as_str().unwrap_or_default().to_owned(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    let repeated = seen.values().filter(|n| **n > 1).count();
    let missing: Vec<String> = orders
        .iter()
        .filter(|o| o.kind == Kind::Valid)
        .flat_map(|o| ["placed", "charged"].map(|e| (o.order_id.clone(), e.to_owned())))
        .filter(|k| !seen.contains_key(k))
        .map(|(order, event)| format!("{order}/{event}"))
        .collect();
    eprintln!(
        "  events              {:>7} / {} expected, {} repeated, {} missing",
        published.len(),
        2 * valid,
        repeated,
        missing.len()
    );
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, valid, expected_dead);
    // Letters are committed with the offsets they follow from: a kill
    // between the letter and its offset leaves neither.
    assert_eq!(
        counts.dlq_duplicates, 0,
        "every letter once (read_committed): {counts}"
    );
    assert!(
        missing.is_empty(),
        "events missing: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert_eq!(repeated, 0, "every event once (read_committed)");
    assert_eq!(published.len(), 2 * valid, "no events for the others");
    assert!(
        outcome.unexpected_exits.is_empty(),
        "the worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}
