//! A zombie on Kafka: two `order-worker` processes in exactly-once mode
//! (`--instance-id`, `--store postgres-inbox --ledger …`) share a 4-partition
//! topic while orders (1 % invalid, 0.5 % poison) are published at a steady
//! pace. One worker is stopped with SIGSTOP past the group's session timeout:
//! the coordinator drops it and the other worker takes its partitions and
//! runs their messages from the committed offsets. Then the stopped worker
//! is resumed with SIGCONT, its open transaction still in hand: the
//! coordinator refuses its offsets (its group generation is gone), so what
//! it produced never becomes visible. Afterwards every valid order executed
//! exactly once, the DLQ (read committed) holds exactly the invalid and
//! poison ones, each once, and nothing is lost. `BACKSTOP_ZOMBIE_ORDERS`
//! sets the size (default 1,000). Takes the Kafka outage lock (the fault
//! suite restarts the broker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop_kafka::Kafka;
use backstop_tests::fault::{read_dead_letters, verify, wait_drained};
use backstop_tests::fleet::{Fleet, assert_stopped};
use backstop_tests::kafka_run::KafkaRun;
use backstop_tests::orders::{Kind, orders};
use backstop_tests::report::Counts;
use backstop_tests::worker::log_path;
use backstop_tests::{KAFKA_OUTAGE_LOCK, env_usize, outage_lock};

/// The order worker's session timeout (`KafkaConfig`'s default).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_resumed_after_its_partitions_moved_commits_nothing_and_nothing_is_lost() {
    let n = env_usize("BACKSTOP_ZOMBIE_ORDERS", 1_000);
    let _lock = outage_lock(KAFKA_OUTAGE_LOCK).await.expect("outage lock");
    let started = Instant::now();
    backstop_tests::worker::binary();
    let brokers = backstop_kafka::brokers_from_env();

    let setup = KafkaRun::create("zombie_kafka", &brokers).await;
    let KafkaRun {
        run,
        topic,
        group,
        ledger,
        kafka,
        ..
    } = &setup;
    let args =
        |instance: &str| setup.worker_args(&["--concurrency", "16", "--instance-id", instance]);
    let logs = [
        log_path(&format!("{run}_zombie")),
        log_path(&format!("{run}_survivor")),
    ];
    let mut fleet = Fleet::spawn(vec![
        (args("zombie"), logs[0].clone()),
        (args("survivor"), logs[1].clone()),
    ])
    .expect("start the workers");

    // Orders at a steady pace (about 10 s in all), so work is in flight
    // when the zombie stops and while it is away.
    let orders = Arc::new(orders(run, n));
    let expected_dead = orders.iter().filter(|o| o.kind != Kind::Valid).count();
    let valid = n - expected_dead;
    let publisher = kafka.publisher().expect("publisher");
    let publishing = {
        let (orders, topic) = (Arc::clone(&orders), topic.clone());
        tokio::spawn(async move {
            let mut acknowledged = 0;
            for chunk in orders.chunks(n.div_ceil(40).max(1)) {
                for order in chunk {
                    publisher
                        .publish(&topic, &order.message)
                        .await
                        .expect("publish an order");
                    acknowledged += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            acknowledged
        })
    };

    // Stopped once it owns partitions and work flows.
    let mut unexpected = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while (!owns_partitions(fleet.log_of(0))
        || ledger.rows().await.unwrap_or(0) < (valid / 5) as i64)
        && Instant::now() < until
    {
        fleet.restart_exited(&mut unexpected);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        owns_partitions(fleet.log_of(0)),
        "the zombie-to-be got no partitions: {}",
        fleet.log_tail(10)
    );
    eprintln!(
        "SIGSTOP the zombie at {} ledger rows",
        ledger.rows().await.unwrap_or(0)
    );
    fleet.signal(0, "STOP").expect("SIGSTOP");
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(6)).await;
    let moved_at = ledger.rows().await.unwrap_or(0);
    eprintln!("SIGCONT the zombie at {moved_at} ledger rows");
    fleet.signal(0, "CONT").expect("SIGCONT");
    let acknowledged = publishing.await.expect("the publisher finishes");

    let drained = wait_drained(
        &mut fleet,
        ledger,
        valid,
        Duration::from_secs(120),
        &mut unexpected,
        || async { true },
    )
    .await;
    let reader = Kafka::new(brokers.clone(), format!("{group}-dlq-reader"));
    let dead = read_dead_letters(
        reader
            .plain_source(&[kafka.dlq_topic(topic).as_str()], 64)
            .expect("DLQ source"),
        expected_dead,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await;
    let zombie_log = plain_log(fleet.log_of(0));
    let statuses = fleet.terminate(Duration::from_secs(30)).await;
    let executions = ledger.executions().await.expect("read the ledger");
    let mut counts = Counts::of_run(
        format!("kafka zombie, {n} orders"),
        &fleet,
        ledger,
        started.elapsed(),
    )
    .await;
    counts.acknowledged = acknowledged;
    let problems = verify(&orders, &executions, &dead, &mut counts);
    eprintln!("{counts}");
    // How the zombie's open work ended: its assignment found lost (its
    // transaction never committed, its records dropped) or an abort.
    let lost = zombie_log
        .lines()
        .filter(|l| l.contains("partitions revoked") && l.contains("lost=true"))
        .count();
    let aborted = zombie_log.matches("transaction aborted").count();
    eprintln!(
        "the zombie found its assignment lost {lost} time(s) and aborted {aborted} transaction(s)"
    );
    let _ = ledger.drop_schema().await;

    assert!(
        drained,
        "not drained in time: {counts}\n{}",
        fleet.log_tail(20)
    );
    assert_eq!(counts.acknowledged, n, "every publish confirmed");
    counts.assert_contract(&problems, valid, expected_dead);
    assert_eq!(counts.dlq_duplicates, 0, "every letter once: {counts}");
    assert!(
        lost + aborted > 0,
        "the resumed zombie neither lost its assignment nor aborted: it was not a zombie"
    );
    assert!(
        unexpected.is_empty(),
        "a worker exited on its own: {unexpected:#?}"
    );
    assert_stopped(statuses);
    fleet.remove_logs();
}

/// The log of a worker, colours stripped.
fn plain_log(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// True when the worker logging to `log` owns partitions (the `owned`
/// count of its last `partitions assigned` line: with cooperative
/// rebalancing an assignment may add nothing to what is owned).
fn owns_partitions(log: &std::path::Path) -> bool {
    plain_log(log)
        .lines()
        .rev()
        .find(|line| line.contains("partitions assigned"))
        .and_then(|line| line.split("owned=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n > 0)
}
