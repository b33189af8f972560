//! The real `order-worker` on Kafka over SASL_SSL (scripts/services/tls.sh,
//! localhost:9094) with `--kafka-option`, the password read from a file:
//! it consumes and dead-letters; with a wrong password it stops at once
//! saying authentication failed, without showing the password.

use std::time::{Duration, Instant};

use backstop_kafka::{Kafka, KafkaOption};
use backstop_tests::fault::read_messages;
use backstop_tests::worker::{Worker, log_path, log_tail};

const PASSWORD: &str = "backstop-secret";

fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("bt-{prefix}-{}", &backstop::message::new_message_id()[..12])
}

fn options(password: &str) -> Vec<String> {
    vec![
        "security.protocol=SASL_SSL".into(),
        "sasl.mechanism=SCRAM-SHA-512".into(),
        "sasl.username=backstop".into(),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={}/ca.pem", certs()),
    ]
}

fn args(topic: &str, group: &str, password: &str, publish: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "--broker",
        "kafka",
        "--url",
        "localhost:9094",
        "--source",
        topic,
        "--group",
        group,
        "--publish",
        &publish.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for option in options(password) {
        args.extend(["--kafka-option".to_owned(), option]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_worker_consumes_and_dead_letters_over_sasl_ssl() {
    let (topic, group) = (unique("tls-orders"), unique("tls-worker"));
    let secret = std::env::temp_dir().join(unique("pw"));
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    let log = log_path(&topic);
    let mut worker = Worker::spawn(
        &args(&topic, &group, &format!("@{}", secret.display()), 100),
        &log,
    )
    .expect("start the worker");
    let kafka_options: Vec<KafkaOption> = options(PASSWORD)
        .iter()
        .map(|s| KafkaOption::parse(s).unwrap())
        .collect();
    let kafka = Kafka::new("localhost:9094", &group).configure(|c| c.apply_options(&kafka_options));
    let until = Instant::now() + Duration::from_secs(90);
    let (mut committed, mut dead) = (0, 0);
    while (committed < 100 || dead < 1) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(worker.exited().is_none(), "{}", log_tail(&log, 30));
        committed = kafka
            .committed_offsets(&topic)
            .await
            .map(|m| m.values().flatten().sum::<i64>())
            .unwrap_or(0);
        dead = match kafka.topics() {
            Ok(t) => t
                .end_offsets(&kafka.dlq_topic(&topic))
                .await
                .map(|m| m.values().sum::<i64>())
                .unwrap_or(0),
            Err(_) => 0,
        };
    }
    // The DLQ's end offsets count the transactions' commit markers too:
    // the letters are read (read_committed, over SASL_SSL).
    let reader = Kafka::new("localhost:9094", format!("{group}-dlq-reader"))
        .configure(|c| c.apply_options(&kafka_options));
    let letters = read_messages(
        reader
            .plain_source(&[kafka.dlq_topic(&topic).as_str()], 8)
            .expect("DLQ reader"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    worker.terminate(Duration::from_secs(20)).await;
    std::fs::remove_file(&secret).ok();
    let tail = log_tail(&log, 200);
    assert_eq!(committed, 100, "every order consumed: {tail}");
    assert!(dead >= 1, "the DLQ was written: {tail}");
    assert_eq!(
        letters.len(),
        1,
        "the invalid order dead-lettered once: {tail}"
    );
    assert!(!tail.contains(PASSWORD), "the password leaked: {tail}");
}

#[tokio::test]
async fn a_wrong_password_stops_the_worker_at_once() {
    let (topic, group) = (unique("tls-orders"), unique("tls-worker"));
    let log = log_path(&topic);
    backstop_tests::worker::binary(); // built before the clock starts
    let started = Instant::now();
    let mut worker =
        Worker::spawn(&args(&topic, &group, "wrong-password", 0), &log).expect("start");
    let mut status = None;
    while status.is_none() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = worker.exited();
    }
    let tail = log_tail(&log, 30);
    let status = status.unwrap_or_else(|| panic!("still running: {tail}"));
    assert!(!status.success(), "{tail}");
    assert!(tail.to_lowercase().contains("authentication"), "{tail}");
    assert!(!tail.contains("wrong-password"), "{tail}");
}
