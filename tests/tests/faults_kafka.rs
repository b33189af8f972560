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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_kafka::Kafka;
use backstop_tests::fault::{chaos, read_dead_letters, read_messages, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::kafka_run::KafkaRun;
use backstop_tests::orders::{Kind, key_and_sequence, keyed_orders, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{KAFKA_OUTAGE_LOCK, env_usize, outage_lock, run_command};

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

    let setup = KafkaRun::create("fault_kafka", &brokers()).await;
    let KafkaRun {
        run,
        topic,
        group,
        ledger,
        kafka,
        ..
    } = &setup;
    let log = log_path(run);
    let events = format!("{topic}.events");
    let args = setup.worker_args(&[
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
    ]);
    let mut fleet = Fleet::one(&args, &log).expect("start the worker");

    let orders = Arc::new(orders(run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let mut outcome = chaos(
        &mut fleet,
        ledger,
        Arc::new(kafka.publisher().expect("publisher")),
        topic,
        orders.clone(),
        kills,
        restart_kafka,
    )
    .await;

    let drained = wait_drained(
        &mut fleet,
        ledger,
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
            .plain_source(&[kafka.dlq_topic(topic).as_str()], 64)
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
        ledger,
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

/// Ordered retries through the real `order-worker` (its default in
/// exactly-once mode): `BACKSTOP_PARK_KEYS` keys (default 48) ×
/// `BACKSTOP_PARK_PER_KEY` orders (default 10), each key's orders published
/// in sequence; 5 % of the runs fail transiently into the 5 s retry tier
/// (`--fail-later`). Two workers; `BACKSTOP_FAULT_KILLS` kill -9 (default
/// 3) and a third worker joining (a rebalance) during the run. Afterwards
/// every order executed once, every key's orders executed in sequence, and
/// no key that never went to a retry tier was parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_keys_keep_their_order_through_kill9_and_a_rebalance() {
    let keys = env_usize("BACKSTOP_PARK_KEYS", 48).div_ceil(8) * 8;
    let per_key = env_usize("BACKSTOP_PARK_PER_KEY", 10);
    let kills = env_usize("BACKSTOP_FAULT_KILLS", 3);
    let _lock = outage_lock(KAFKA_OUTAGE_LOCK).await.expect("outage lock");
    let started = Instant::now();
    backstop_tests::worker::binary();

    let setup = KafkaRun::create("park_kafka", &brokers()).await;
    let KafkaRun {
        run,
        topic,
        group,
        ledger,
        kafka,
        ..
    } = &setup;
    let args = |instance: &str| {
        setup.worker_args(&[
            "--fail-rate",
            "0.05",
            "--fail-later",
            "--concurrency",
            "32",
            "--instance-id",
            instance,
        ])
    };
    let members = ["park-w0", "park-w1"]
        .iter()
        .map(|id| (args(id), log_path(&format!("{run}-{id}"))))
        .collect();
    let mut fleet = Fleet::spawn(members).expect("start the workers");
    let joiner_log = log_path(&format!("{run}-park-w2"));
    let joiner = Arc::new(std::sync::Mutex::new(None::<Worker>));

    let orders = Arc::new(keyed_orders(run, keys, per_key));
    let n = orders.len();
    let join = {
        let (joiner, args, log) = (Arc::clone(&joiner), args("park-w2"), joiner_log.clone());
        move || async move {
            eprintln!("a third worker joins the group");
            let worker = Worker::spawn(&args, &log).expect("start the third worker");
            *joiner.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker);
        }
    };
    let mut outcome = chaos(
        &mut fleet,
        ledger,
        Arc::new(kafka.publisher().expect("publisher")),
        topic,
        orders.clone(),
        kills,
        join,
    )
    .await;
    let drained = wait_drained(
        &mut fleet,
        ledger,
        n,
        Duration::from_secs(180),
        &mut outcome.unexpected_exits,
        || async { true },
    )
    .await;
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let joined = joiner.lock().unwrap_or_else(|e| e.into_inner()).take();
    let joiner_status = match joined {
        Some(mut worker) => worker.terminate(Duration::from_secs(30)).await,
        None => None,
    };
    let executions = ledger.executions().await.expect("read the ledger");
    let in_order = ledger.in_execution_order().await.expect("read the ledger");
    let mut counts = Counts::of_run(
        format!("kafka ordered retries, {n} orders"),
        &fleet,
        ledger,
        started.elapsed(),
    )
    .await
    .with_chaos(&outcome);
    let problems = verify(&orders, &executions, &[], &mut counts);
    eprintln!("{counts}");

    // Each key's orders in sequence: the first execution of each order
    // (verify counts repeats) comes after the previous one's.
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut out_of_order = Vec::new();
    for order_id in &in_order {
        let Some((key, seq)) = key_and_sequence(order_id) else {
            continue;
        };
        let expected = next.entry(key.to_owned()).or_insert(0);
        if seq == *expected {
            *expected += 1;
        } else if seq > *expected {
            out_of_order.push(format!("{order_id} ran before {key}-s{expected:04}"));
            *expected = seq + 1;
        }
    }
    // Keys parked (any record of the parked topic) against keys that went
    // to a retry tier.
    let read = |topics: Vec<String>, reader: &str| {
        let source = Kafka::new(brokers(), format!("{group}-{reader}"));
        async move {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            read_messages(
                source.plain_source(&names, 64).expect("reader"),
                1,
                Duration::from_secs(3),
                Duration::from_secs(30),
            )
            .await
        }
    };
    let retried: HashSet<String> = read(kafka.retry_topics(topic), "retry-reader")
        .await
        .iter()
        .filter_map(|m| m.key.as_ref())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let parked_records = read(
        vec![backstop_kafka::parked_topic(topic, group)],
        "parked-reader",
    )
    .await;
    let mut parked = HashSet::new();
    let mut copies = 0;
    for record in &parked_records {
        let Some(key) = record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
        else {
            continue;
        };
        if let Some(k) = key.strip_prefix("h:") {
            parked.insert(k.to_owned());
        } else if let Some(rest) = key.strip_prefix("f:") {
            copies += 1;
            parked.insert(rest.split_once(':').map_or(rest, |(_, k)| k).to_owned());
        }
    }
    eprintln!(
        "  ordered retries     {} keys retried, {} parked, {} parked-topic records ({copies} copies), {} out of order",
        retried.len(),
        parked.len(),
        parked_records.len(),
        out_of_order.len()
    );
    let never_failed: Vec<&String> = parked.difference(&retried).collect();
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, n, 0);
    assert!(
        out_of_order.is_empty(),
        "orders ran out of their key's sequence: {:?}",
        &out_of_order[..out_of_order.len().min(10)]
    );
    assert!(!retried.is_empty(), "some orders went to a retry tier");
    assert!(copies > 0, "some orders were parked behind a retried one");
    assert!(
        never_failed.is_empty(),
        "keys that never went to a retry tier were parked: {never_failed:?}"
    );
    assert!(
        outcome.unexpected_exits.is_empty(),
        "a worker exited on its own: {:#?}",
        outcome.unexpected_exits
    );
    assert_stopped(statuses);
    assert_stopped(vec![joiner_status]);
    fleet.remove_logs();
    let _ = std::fs::remove_file(&joiner_log);
}
