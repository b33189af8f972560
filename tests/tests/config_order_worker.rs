//! The real `order-worker` configured by a file and the environment only:
//! the contract on RabbitMQ and on Kafka with two sources in one process
//! (one runner each, one metrics endpoint, one signal stops both), the
//! precedence file < environment < flag, and what a bad file says.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::RabbitMq;
use backstop_tests::fault::read_messages;
use backstop_tests::orders::orders;
use backstop_tests::worker::{Worker, binary, log_path, log_tail};

/// Orders per source; every 100th is invalid and one is poison: 2 dead letters.
const ORDERS: usize = 100;
const DEAD: u64 = 2;

fn unique(prefix: &str) -> String {
    format!("bt-{prefix}-{}", &backstop::message::new_message_id()[..12])
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(unique(name));
    std::fs::write(&path, text).expect("write a temporary file");
    path
}

fn config_args(file: &std::path::Path) -> Vec<String> {
    vec!["--config".to_owned(), file.display().to_string()]
}

fn env(vars: &[(&str, String)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// `backstop_messages_total{outcome="handled"}` read from the worker's one endpoint.
async fn handled(worker: &Worker) -> Option<u64> {
    backstop_tests::scrape::messages(worker.metrics_addr(), backstop::outcome::Outcome::Handled)
        .await
}

/// A worker file with two Kafka sources, `first` and `second`, each on its
/// own topic and group; the topics created, each with [`ORDERS`] orders.
struct TwoSources {
    file: PathBuf,
    first: String,
    second: String,
    group_a: String,
    group_b: String,
    brokers: String,
}

async fn two_kafka_sources(run: &str) -> TwoSources {
    let (first, second) = (format!("{run}-a"), format!("{run}-b"));
    let (group_a, group_b) = (format!("{run}-ga"), format!("{run}-gb"));
    let file = write(
        "worker.toml",
        &format!(
            "[broker]\nkind = \"kafka\"\n\
             [sources.first]\nqueue = \"{first}\"\ngroup = \"{group_a}\"\n\
             [sources.second]\nqueue = \"{second}\"\ngroup = \"{group_b}\"\n"
        ),
    );
    let brokers = backstop_kafka::brokers_from_env();
    for (topic, group) in [(&first, &group_a), (&second, &group_b)] {
        let kafka = Kafka::new(brokers.clone(), group.clone());
        kafka
            .ensure_topics([TopicSpec::new(topic.clone()).partitions(4)])
            .await
            .expect("create the topic");
        let publisher = kafka.publisher().expect("a publisher");
        for order in orders(topic, ORDERS) {
            publisher
                .publish(topic, &order.message)
                .await
                .expect("publish");
        }
    }
    TwoSources {
        file,
        first,
        second,
        group_a,
        group_b,
        brokers,
    }
}

/// Stops the worker with one SIGTERM and returns its log, asserting it
/// stopped cleanly with both sources' summaries.
async fn stop_both(mut worker: Worker, log: &std::path::Path) -> String {
    let status = worker.terminate(Duration::from_secs(30)).await;
    let tail = log_tail(log, 200);
    let status = status.unwrap_or_else(|| panic!("one SIGTERM did not stop it: {tail}"));
    assert!(status.success(), "{tail}");
    for name in ["first", "second"] {
        let expected = format!(
            "{name}: received {ORDERS} · handled {} · dead-lettered {DEAD}",
            ORDERS as u64 - DEAD
        );
        assert!(tail.contains(&expected), "{expected:?} not in {tail}");
    }
    tail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_and_the_environment_run_two_rabbitmq_sources_in_one_process() {
    let run = unique("cfg-rmq");
    let (first, second) = (format!("{run}-a"), format!("{run}-b"));
    let password = write("pw", "guest\n");
    let file = write(
        "worker.toml",
        &format!(
            "[broker]\nkind = \"rabbitmq\"\nusername = \"guest\"\npassword_file = \"{}\"\n\
             [defaults]\nconcurrency = 16\n\
             [sources.first]\nqueue = \"{first}\"\n\
             [sources.second]\nqueue = \"{second}\"\nconcurrency = 4\n",
            password.display()
        ),
    );
    // The URL without credentials: they come from the file and its secret file.
    let url = "amqp://127.0.0.1:5672/%2f".to_owned();
    let log = log_path(&run);
    let worker = Worker::spawn_configured(
        &config_args(&file),
        &env(&[("BACKSTOP_BROKER__URL", url)]),
        &log,
    )
    .expect("start the worker");
    let rabbit = RabbitMq::connect(backstop_rabbitmq::url_from_env())
        .await
        .expect("connect");
    // The worker declares its queues; publish once they exist.
    let until = Instant::now() + Duration::from_secs(60);
    for queue in [&first, &second] {
        while rabbit.message_count(queue).await.is_err() {
            assert!(
                Instant::now() < until,
                "no queue {queue}: {}",
                log_tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let publisher = rabbit.publisher();
        for order in orders(queue, ORDERS) {
            publisher
                .publish(queue, &order.message)
                .await
                .expect("publish");
        }
    }
    let mut done = false;
    while !done && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut all = true;
        for queue in [&first, &second] {
            let ready = rabbit.message_count(queue).await.unwrap_or(u32::MAX);
            let dead = rabbit
                .message_count(&backstop_rabbitmq::topology::dlq_name(queue))
                .await
                .unwrap_or(0);
            all &= ready == 0 && u64::from(dead) == DEAD;
        }
        done = all && handled(&worker).await == Some(2 * (ORDERS as u64 - DEAD));
    }
    assert!(done, "not everything settled: {}", log_tail(&log, 30));
    let tail = stop_both(worker, &log).await;
    assert!(!tail.contains("guest:guest"), "{tail}");
    rabbit.close().await;
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(&password).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_and_the_environment_run_two_kafka_sources_in_one_process() {
    let run = unique("cfg-kafka");
    let TwoSources {
        file,
        first,
        second,
        group_a,
        group_b,
        brokers,
    } = two_kafka_sources(&run).await;
    let log = log_path(&run);
    // The bootstrap servers through the variable of earlier releases.
    let worker = Worker::spawn_configured(
        &config_args(&file),
        &env(&[("BACKSTOP_KAFKA_BROKERS", brokers.clone())]),
        &log,
    )
    .expect("start the worker");
    let until = Instant::now() + Duration::from_secs(90);
    let mut done = false;
    let mut worker = worker;
    while !done && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(worker.exited().is_none(), "{}", log_tail(&log, 30));
        let mut all = true;
        for (topic, group) in [(&first, &group_a), (&second, &group_b)] {
            let kafka = Kafka::new(brokers.clone(), group.clone());
            let committed = kafka
                .committed_offsets(topic)
                .await
                .map(|m| m.values().flatten().sum::<i64>())
                .unwrap_or(0);
            let dead = match kafka.topics() {
                Ok(t) => t
                    .end_offsets(&kafka.dlq_topic(topic))
                    .await
                    .map(|m| m.values().sum::<i64>())
                    .unwrap_or(0),
                Err(_) => 0,
            };
            // At least: the worker's transactions add a commit marker to
            // each DLQ partition they wrote (the letters are read below).
            all &= committed == ORDERS as i64 && dead >= DEAD as i64;
        }
        done = all && handled(&worker).await == Some(2 * (ORDERS as u64 - DEAD));
    }
    assert!(done, "not everything settled: {}", log_tail(&log, 30));
    for (topic, group) in [(&first, &group_a), (&second, &group_b)] {
        let kafka = Kafka::new(brokers.clone(), group.clone());
        let reader = Kafka::new(brokers.clone(), format!("{group}-dlq-reader"));
        let letters = read_messages(
            reader
                .plain_source(&[kafka.dlq_topic(topic).as_str()], 8)
                .expect("DLQ reader"),
            DEAD as usize,
            Duration::from_secs(1),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            letters.len(),
            DEAD as usize,
            "{topic}: its letters, once each"
        );
    }
    stop_both(worker, &log).await;
    std::fs::remove_file(&file).ok();
}

/// Runs the worker on the in-memory broker to the end; its output.
async fn memory_run(file: &std::path::Path, vars: &[(&str, String)], flags: &[&str]) -> String {
    let log = log_path(&unique("cfg-mem"));
    let mut args = config_args(file);
    args.extend(["--publish", "100", "--until-drained"].map(str::to_owned));
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let mut worker = Worker::spawn_configured(&args, &env(vars), &log).expect("start the worker");
    let until = Instant::now() + Duration::from_secs(30);
    while worker.exited().is_none() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = log_tail(&log, 50);
    let status = worker
        .exited()
        .unwrap_or_else(|| panic!("still running: {tail}"));
    assert!(status.success(), "{tail}");
    tail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_beats_the_environment_which_beats_the_file() {
    // Every sample order is over 10 bytes: with that limit all 100 are
    // dead-lettered as too large; with a large one only the invalid one.
    let file = write(
        "precedence.toml",
        "[broker]\nkind = \"memory\"\n[defaults]\nmax_payload_bytes = 10\n[sources.orders]\n",
    );
    let file_only = memory_run(&file, &[], &[]).await;
    assert!(
        file_only.contains("dead-lettered 100 "),
        "file: {file_only}"
    );
    let large = [("BACKSTOP_DEFAULTS__MAX_PAYLOAD_BYTES", "100000".to_owned())];
    let with_env = memory_run(&file, &large, &[]).await;
    assert!(
        with_env.contains("handled 99 · dead-lettered 1 "),
        "env: {with_env}"
    );
    let with_flag = memory_run(&file, &large, &["--max-payload-bytes", "10"]).await;
    assert!(
        with_flag.contains("dead-lettered 100 "),
        "flag: {with_flag}"
    );
    std::fs::remove_file(&file).ok();
}

#[tokio::test]
async fn a_bad_file_stops_the_worker_naming_the_key_the_file_and_the_line() {
    binary(); // built before the clock starts
    let cases = [
        (
            "[store]\nkind = \"redis\"\nlease = 100\n",
            vec!["store.lease: unknown key".to_owned()],
        ),
        (
            "[broker]\nkind = \"rabbitmq\"\npassword = \"s3cr3t-pw\" trailing\n",
            vec![":3:".to_owned(), "not valid TOML".to_owned()],
        ),
        (
            "[defaults]\nconcurrency = \"s3cr3t-pw\"\n",
            vec!["defaults.concurrency".to_owned()],
        ),
    ];
    for (text, expected) in cases {
        let file = write("bad.toml", text);
        let log = log_path(&unique("cfg-bad"));
        let mut worker = Worker::spawn_configured(&config_args(&file), &[], &log).expect("start");
        let started = Instant::now();
        let mut status = None;
        while status.is_none() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = worker.exited();
        }
        let tail = log_tail(&log, 20);
        let status = status.unwrap_or_else(|| panic!("still running: {tail}"));
        assert_eq!(status.code(), Some(2), "{tail}");
        assert!(tail.contains(&file.display().to_string()), "{tail}");
        for part in expected {
            assert!(tail.contains(&part), "{part:?} not in {tail}");
        }
        assert!(!tail.contains("s3cr3t"), "{tail}");
        std::fs::remove_file(&file).ok();
    }
    let log = log_path(&unique("cfg-missing"));
    let mut worker = Worker::spawn_configured(
        &["--config".to_owned(), "/nonexistent/worker.toml".to_owned()],
        &[],
        &log,
    )
    .expect("start");
    let started = Instant::now();
    while worker.exited().is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = log_tail(&log, 20);
    assert_eq!(worker.exited().and_then(|s| s.code()), Some(2), "{tail}");
    assert!(tail.contains("/nonexistent/worker.toml"), "{tail}");
}

/// A source stopped by a fatal error stops the whole process: a worker
/// with two Kafka sources whose first one is fenced (another member joins
/// its group with the worker's `group.instance.id`) exits with the error
/// instead of running on with one source and a dead one (its supervisor
/// restarts it whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fenced_source_stops_a_worker_of_two() {
    let run = unique("cfg-fenced");
    let instance = format!("{run}-i");
    let TwoSources {
        file,
        first,
        group_a,
        brokers,
        ..
    } = two_kafka_sources(&run).await;
    let log = log_path(&run);
    let mut args = config_args(&file);
    args.extend(["--instance-id".to_owned(), instance.clone()]);
    let mut worker = Worker::spawn_configured(
        &args,
        &env(&[("BACKSTOP_KAFKA_BROKERS", brokers.clone())]),
        &log,
    )
    .expect("start the worker");
    // Both sources at work first.
    let until = Instant::now() + Duration::from_secs(90);
    while handled(&worker).await != Some(2 * (ORDERS as u64 - DEAD)) {
        assert!(
            Instant::now() < until,
            "not consuming: {}",
            log_tail(&log, 30)
        );
        assert!(worker.exited().is_none(), "{}", log_tail(&log, 30));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A rival member of the first group with the worker's static id.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rival = tokio::task::spawn_blocking({
        let (stop, brokers, group, topic) = (stop.clone(), brokers.clone(), group_a, first);
        move || {
            use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
            // The adapter's own consumer settings for a static member: the
            // worker's assignor, or the coordinator refuses the join.
            let mut config = backstop_kafka::KafkaConfig::new(brokers, group);
            config.group_instance_id = Some(instance);
            config.session_timeout = Duration::from_secs(6);
            let consumer: BaseConsumer = config
                .consumer_config()
                .create()
                .expect("the rival consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let _ = consumer.poll(Duration::from_millis(100));
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = worker.exited() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the worker runs on with a fenced source: {}",
            log_tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = rival.await;
    let tail = log_tail(&log, 40);
    assert!(!status.success(), "{tail}");
    assert!(tail.contains("FENCED_INSTANCE_ID"), "{tail}");
    assert!(tail.contains("stopping the other sources"), "{tail}");
    std::fs::remove_file(&file).ok();
    let _ = std::fs::remove_file(&log);
}
