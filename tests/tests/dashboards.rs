//! The Grafana dashboard (`dashboards/backstop.json`) and the alert rules
//! (`alerts/backstop.rules.yml`) checked as code:
//!
//! - promtool accepts the rules and their unit tests
//!   (`alerts/backstop.rules.test.yml`) pass; every alert has a case that
//!   fires it and one that does not, a `for:`, a severity, a summary, a
//!   description and a runbook that is a heading of README.md;
//! - every dashboard expression is PromQL promtool parses;
//! - every backstop metric the dashboard and the rules use is served by a
//!   real `order-worker`: one on RabbitMQ and one on Kafka, driven through
//!   every outcome (handled, dead-lettered, deferred, duplicate, nacked when
//!   two copies of one order meet in flight) and finally halted (its DLQ
//!   deleted under it), each `/metrics` read throughout. A name counts when
//!   either worker serves it (the Kafka lag only exists on Kafka, the queue
//!   depth only on RabbitMQ); a `_bucket` needs a histogram, not a summary.
//!   The names come from the two files and the scrapes, never from a list
//!   here.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/services/all.sh`
//! installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backstop::Message;
use backstop::publish::Publisher;
use backstop_kafka::Kafka;
use backstop_rabbitmq::RabbitMq;
use backstop_rabbitmq::lapin::options::QueueDeleteOptions;
use backstop_tests::ops::{self, Reference};
use backstop_tests::scrape;
use backstop_tests::worker::{Worker, log_path, log_tail};
use backstop_tests::{poll, unique};

mod common;

const RULES: &str = "alerts/backstop.rules.yml";
const RULE_TESTS: &str = "alerts/backstop.rules.test.yml";
const DASHBOARD: &str = "dashboards/backstop.json";

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Runs `promtool ARGS` in the repository root; its output, or a panic
/// with that output when it fails.
fn promtool(args: &[&str]) -> String {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool not found: install prometheus (apt), as scripts/services/all.sh does")
        }
        Err(e) => panic!("promtool did not run: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    text
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]);
    let alerts = ops::alerts(&read(RULES));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_tested_both_ways_and_documented() {
    let alerts = ops::alerts(&read(RULES));
    assert!(!alerts.is_empty(), "no alert in {RULES}");
    let cases = ops::alert_cases(&read(RULE_TESTS));
    let readme = read("README.md");
    let anchors = ops::heading_anchors(&readme);
    let mut problems = Vec::new();
    for alert in &alerts {
        let name = &alert.name;
        let case = cases.get(name).copied().unwrap_or_default();
        if !case.fires {
            problems.push(format!("{name}: no case in {RULE_TESTS} fires it"));
        }
        if !case.quiet {
            problems.push(format!(
                "{name}: no case in {RULE_TESTS} expects it not to fire"
            ));
        }
        if alert.for_.is_none() {
            problems.push(format!("{name}: no for:"));
        }
        match alert.fields.get("severity").map(String::as_str) {
            Some("warning" | "critical") => {}
            other => problems.push(format!("{name}: severity {other:?}")),
        }
        for annotation in ["summary", "description"] {
            if alert.fields.get(annotation).is_none_or(String::is_empty) {
                problems.push(format!("{name}: no {annotation}"));
            }
        }
        match alert
            .fields
            .get("runbook")
            .and_then(|r| r.strip_prefix("README.md#"))
        {
            Some(anchor) if anchors.contains(anchor) => {}
            other => problems.push(format!(
                "{name}: runbook {other:?} is no heading of README.md"
            )),
        }
        // The runbook's table says what the rules say.
        let row = format!(
            "| {name} | `{}` | {} | {} |",
            alert.expr,
            alert.for_.as_deref().unwrap_or("-"),
            alert.fields.get("severity").map_or("-", String::as_str)
        );
        if !readme.contains(&row) {
            problems.push(format!("README.md has no row {row}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_expression_is_promql() {
    let dashboard = dashboard();
    let exprs = ops::dashboard_exprs(&dashboard);
    assert!(!exprs.is_empty(), "no expression in {DASHBOARD}");
    // As recording rules, promtool parses each one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = ops::without_grafana_variables(expr).replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: '{expr}'\n"
        ));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).expect("write the rules");
    let checked = promtool(&["check", "rules", &file.display().to_string()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
    // Every panel target filters by the dashboard's variables.
    for expr in &exprs {
        assert!(
            expr.contains("source=~\"$source\"") && expr.contains("group=~\"$group\""),
            "{expr} ignores the source or group variable"
        );
    }
}

/// The backstop metric names of the dashboard (expressions and variable
/// queries) and of the alert rules, with where each is used.
fn referenced() -> BTreeMap<Reference, BTreeSet<&'static str>> {
    let dashboard = dashboard();
    let mut used: BTreeMap<Reference, BTreeSet<&'static str>> = BTreeMap::new();
    let dashboard_exprs = ops::dashboard_exprs(&dashboard)
        .into_iter()
        .chain(ops::dashboard_variable_queries(&dashboard));
    for expr in dashboard_exprs {
        for r in ops::references(&expr) {
            used.entry(r).or_default().insert("dashboard");
        }
    }
    for alert in ops::alerts(&read(RULES)) {
        for r in ops::references(&alert.expr) {
            used.entry(r).or_default().insert("alerts");
        }
    }
    used
}

/// A worker whose every `/metrics` the test has read, merged.
struct Scraped {
    name: &'static str,
    worker: Worker,
    log: PathBuf,
    families: BTreeMap<String, String>,
    last: String,
}

impl Scraped {
    fn new(name: &'static str, worker: Worker, log: PathBuf) -> Self {
        Scraped {
            name,
            worker,
            log,
            families: BTreeMap::new(),
            last: String::new(),
        }
    }

    /// Reads `/metrics` once, adding what it shows (nothing if it did not answer).
    async fn scrape(&mut self) {
        if let Some(text) = scrape::metrics(self.worker.metrics_addr()).await {
            self.families.extend(ops::families(&text));
            self.last = text;
        }
    }

    /// The `backstop_messages_total` count of the outcome `label` in the last scrape.
    fn count(&self, label: &str) -> u64 {
        let label = format!("outcome=\"{label}\"");
        self.last
            .lines()
            .filter(|l| l.starts_with("backstop_messages_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// The counts of the last scrape (the labels: `backstop::metrics`).
    fn counts(&self) -> Counts {
        Counts {
            handled: self.count("handled"),
            dead_lettered: self.count("dead_lettered"),
            deferred: self.count("deferred"),
            duplicate: self.count("duplicate"),
            nacked: self.count("nacked"),
        }
    }

    /// Whether the last scrape shows `gauge` at 1.
    fn is_one(&self, gauge: &str) -> bool {
        self.last.lines().any(|l| {
            l.strip_prefix(gauge)
                .is_some_and(|rest| rest.starts_with([' ', '{']) && rest.ends_with(" 1"))
        })
    }

    /// Scrapes until `done` holds for the counts, or panics after `deadline`.
    async fn until(&mut self, what: &str, deadline: Duration, done: impl Fn(&Counts) -> bool) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.worker.exited() {
                panic!(
                    "the {} worker exited ({status}): {}",
                    self.name,
                    log_tail(&self.log, 30)
                );
            }
            self.scrape().await;
            let counts = self.counts();
            if done(&counts) {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{}: no {what} within {deadline:?} ({counts:?}): {}",
                self.name,
                log_tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `backstop_messages_total` by outcome.
#[derive(Debug)]
struct Counts {
    handled: u64,
    dead_lettered: u64,
    deferred: u64,
    duplicate: u64,
    nacked: u64,
}

impl Counts {
    fn settled(&self) -> u64 {
        self.handled + self.dead_lettered + self.deferred + self.duplicate
    }
}

/// Every first attempt fails with this probability; the backoff after it
/// (full jitter up to 10 s) is mostly over the 1 s slept in process, so
/// most of those are deferred to a retry tier.
const WORKER_CONFIG: &str = "[defaults]\nbackoff_initial_ms = 10000\nbackoff_max_ms = 10000\n";

fn worker_args(config: &Path, extra: &[&str]) -> Vec<String> {
    [
        "--config",
        &config.display().to_string(),
        "--concurrency",
        "8",
        "--max-attempts",
        "3",
        "--fail-rate",
        "0.3",
        "--work-ms",
        "100",
    ]
    .iter()
    .chain(extra)
    .map(|a| (*a).to_owned())
    .collect()
}

fn order(id: &str, amount: i64) -> Message {
    Message::new(format!(r#"{{"order_id":"{id}","amount":{amount}}}"#))
        .with_message_id(format!("m-{id}"))
        .with_key(id.to_owned())
}

const DEADLINE: Duration = Duration::from_secs(40);

/// On RabbitMQ: handled, dead-lettered (invalid and poison), deferred,
/// duplicate (republished after being handled) and two copies of one order
/// in flight at once (the second busy: nacked); then the DLQ is deleted
/// and a poison message halts the runner.
async fn rabbitmq(config: &Path, until_seen: &BTreeSet<String>) -> Scraped {
    let queue = unique("dash_rmq");
    let log = log_path(&queue);
    let _ = std::fs::remove_file(&log);
    let worker = Worker::spawn(
        &worker_args(config, &["--broker", "rabbitmq", "--source", &queue]),
        &log,
    )
    .expect("start the RabbitMQ worker");
    let mut scraped = Scraped::new("RabbitMQ", worker, log.clone());
    let rabbit = RabbitMq::connect(backstop_rabbitmq::url_from_env())
        .await
        .expect("connect to RabbitMQ");
    let declared = poll(DEADLINE, Duration::from_millis(100), || async {
        rabbit.message_count(&queue).await.ok()
    })
    .await;
    assert!(declared.is_some(), "no queue: {}", log_tail(&log, 30));
    let publisher = rabbit.publisher();
    let mut messages: Vec<Message> = (0..40)
        .map(|i| order(&format!("{queue}-o{i}"), 5))
        .collect();
    messages.extend((0..3).map(|i| order(&format!("{queue}-bad{i}"), -1)));
    messages.extend((0..2).map(|i| Message::new(format!("not json {i}"))));
    for i in 0..8 {
        // Two copies of one order, published back to back: while one runs
        // (100 ms) the other finds its key busy.
        let id = format!("{queue}-twin{i}");
        messages.push(order(&id, 7));
        messages.push(order(&id, 7).with_message_id(format!("m-{id}-copy")));
    }
    for m in &messages {
        publisher.publish(&queue, m).await.expect("publish");
    }
    scraped
        .until("handled, dead-lettered and deferred", DEADLINE, |c| {
            c.handled >= 10 && c.dead_lettered >= 5 && c.deferred >= 1
        })
        .await;
    // Handled before: acked as duplicates.
    for m in messages.iter().take(10) {
        publisher.publish(&queue, m).await.expect("publish");
    }
    scraped
        .until("duplicates", DEADLINE, |c| c.duplicate >= 1)
        .await;
    settle(&mut scraped, until_seen).await;
    // The DLQ gone under the running worker: the next dead letter can never
    // be written, and the runner halts.
    let channel = rabbit.channel().await.expect("a channel");
    channel
        .queue_delete(
            backstop_rabbitmq::topology::dlq_name(&queue)
                .as_str()
                .into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the DLQ");
    publisher
        .publish(&queue, &Message::new("not json, no DLQ"))
        .await
        .expect("publish");
    let started = Instant::now();
    let mut halted = false;
    while !halted && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        scraped.scrape().await;
        halted = scraped.is_one(backstop::runner::HALTED);
    }
    println!(
        "RabbitMQ: runner halted on the deleted DLQ: {halted}; counts {:?}",
        scraped.counts()
    );
    common::cleanup(&rabbit, &queue).await;
    rabbit.close().await;
    scraped
}

/// On Kafka: 100 sample orders published by the worker (one invalid),
/// handled, dead-lettered and deferred.
async fn kafka(config: &Path, until_seen: &BTreeSet<String>) -> Scraped {
    let topic = unique("dash_kafka");
    let group = format!("{topic}_group");
    let log = log_path(&topic);
    let _ = std::fs::remove_file(&log);
    let worker = Worker::spawn(
        &worker_args(
            config,
            &[
                "--broker",
                "kafka",
                "--source",
                &topic,
                "--group",
                &group,
                "--publish",
                "100",
            ],
        ),
        &log,
    )
    .expect("start the Kafka worker");
    let mut scraped = Scraped::new("Kafka", worker, log);
    scraped
        .until("100 outcomes, dead letters and deferrals", DEADLINE, |c| {
            c.settled() >= 100 && c.dead_lettered >= 1 && c.deferred >= 1
        })
        .await;
    settle(&mut scraped, until_seen).await;
    println!("Kafka: counts {:?}", scraped.counts());
    let kafka = Kafka::new(backstop_kafka::brokers_from_env(), group);
    if let Ok(topics) = kafka.topics() {
        let mut names = kafka.retry_topics(&topic);
        names.push(kafka.dlq_topic(&topic));
        names.push(backstop_kafka::parked_topic(&topic, &kafka.config().group));
        names.push(topic.clone());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = topics.delete(&names).await;
    }
    scraped
}

/// Scrapes for a few more seconds, until every name of `wanted` was seen
/// (polled gauges show up on their first poll).
async fn settle(scraped: &mut Scraped, wanted: &BTreeSet<String>) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8)
        && !wanted.iter().all(|w| scraped.families.contains_key(w))
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        scraped.scrape().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_served_by_a_real_worker() {
    let started = Instant::now();
    let used = referenced();
    assert!(
        used.keys().any(|r| r.needs_buckets),
        "the dashboard reads no histogram: is the parsing right? {used:?}"
    );
    let wanted: BTreeSet<String> = used.keys().map(|r| r.family.clone()).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("worker.toml");
    std::fs::write(&config, WORKER_CONFIG).expect("write the configuration");
    // Build the worker once before both start.
    backstop_tests::worker::binary();
    let (rabbitmq, kafka) = tokio::join!(rabbitmq(&config, &wanted), kafka(&config, &wanted));
    let rabbit_counts = rabbitmq.counts();
    assert!(
        rabbit_counts.handled > 0
            && rabbit_counts.dead_lettered > 0
            && rabbit_counts.deferred > 0
            && rabbit_counts.duplicate > 0
            && rabbit_counts.nacked > 0,
        "every outcome on RabbitMQ: {rabbit_counts:?}"
    );
    let mut exposed: BTreeMap<String, String> = BTreeMap::new();
    for scraped in [&rabbitmq, &kafka] {
        for (family, kind) in &scraped.families {
            exposed.insert(family.clone(), kind.clone());
        }
    }
    println!(
        "{:<48} {:<10} {:<18} served by",
        "metric", "type", "used in"
    );
    for (r, places) in &used {
        let served: Vec<&str> = [&rabbitmq, &kafka]
            .iter()
            .filter(|s| s.families.contains_key(&r.family))
            .map(|s| s.name)
            .collect();
        println!(
            "{:<48} {:<10} {:<18} {}",
            format!(
                "{}{}",
                r.family,
                if r.needs_buckets { "_bucket" } else { "" }
            ),
            exposed.get(&r.family).map_or("-", String::as_str),
            places.iter().copied().collect::<Vec<_>>().join(", "),
            if served.is_empty() {
                "NOBODY".to_owned()
            } else {
                served.join(", ")
            }
        );
    }
    let missing = ops::missing(&used.keys().cloned().collect(), &exposed);
    println!("scraped in {:?}", started.elapsed());
    assert!(
        missing.is_empty(),
        "{} of the {} metric names the dashboard and the alert rules use are not served by the order worker on RabbitMQ or Kafka:\n  {}",
        missing.len(),
        used.len(),
        missing
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
