//! The operations server of a real `order-worker` on real brokers:
//! `/healthz` (liveness) stays 200 through an idle minute and through a
//! broker outage; `/readyz` (readiness) turns 503 within 5 s of the broker
//! stopping and back to 200 within the reconnect backoff's maximum + 5 s of
//! it returning; unknown paths answer 404.
//!
//! Each test stops its broker (RabbitMQ: `rabbitmqctl stop_app`; Kafka:
//! `scripts/services/kafka.sh stop`) under that broker's outage lock, and
//! starts it again also when it fails.
//! `BACKSTOP_PROBE_IDLE_SECS` sets the idle stretch (default 60).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backstop_tests::scrape::get;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{KAFKA_OUTAGE_LOCK, RABBITMQ_OUTAGE_LOCK, env_usize, outage_lock, unique};

/// Liveness fails after this much silence here (idle loops beat every second).
const STUCK_AFTER_SECS: &str = "5";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn services(script: &str) -> String {
    format!(
        "{}/../scripts/services/{script}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `program args`, with the sbin folders on PATH (rabbitmqctl).
fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!(
                "/usr/sbin:/usr/bin:/sbin:/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// Starts the broker again if the test stopped it and then failed.
struct Restore(&'static str);

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("restoring {} after a failure", self.0);
            let _ = std::process::Command::new("bash")
                .arg(services(self.0))
                .arg("start")
                .status();
        }
    }
}

/// Polls `path` until it answers `status`, at most `within`; how long it took.
async fn until(addr: SocketAddr, path: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        last = get(addr, path).await;
        if last.as_ref().is_some_and(|(s, _)| *s == status) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} did not answer {status} within {within:?}; last answer: {last:?}");
}

/// `/healthz` is 200 on every read for `secs` seconds (one read a second).
async fn live_for(addr: SocketAddr, secs: u64) {
    for second in 0..secs {
        let answer = get(addr, "/healthz").await;
        assert!(
            answer.as_ref().is_some_and(|(s, _)| *s == 200),
            "/healthz after {second} s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The value of the worker's `backstop_ready` sample.
async fn ready_gauge(addr: SocketAddr) -> String {
    let page = get(addr, "/metrics").await.expect("/metrics answers").1;
    let line = page
        .lines()
        .find(|l| l.starts_with("backstop_ready{"))
        .unwrap_or_else(|| panic!("no backstop_ready sample in:\n{page}"));
    line.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// What both brokers check: an idle stretch live and ready, 404 elsewhere,
/// the outage (`stop`), then back (`start`, `back_within`).
async fn probe(
    worker: &mut Worker,
    name: &str,
    stop: impl FnOnce(),
    start: impl FnOnce(),
    back_within: Duration,
) {
    let addr = worker.metrics_addr();
    until(addr, "/readyz", 200, Duration::from_secs(60)).await;
    let (status, body) = get(addr, "/healthz").await.expect("/healthz answers");
    assert_eq!(
        (status, body.trim()),
        (200, format!("{name}: live").as_str())
    );
    assert_eq!(get(addr, "/nowhere").await.map(|(s, _)| s), Some(404));
    assert_eq!(ready_gauge(addr).await, "1", "backstop_ready while ready");

    // Idle: nothing published. Liveness must not mistake it for a stall.
    let idle = env_usize("BACKSTOP_PROBE_IDLE_SECS", 60) as u64;
    live_for(addr, idle).await;
    assert_eq!(get(addr, "/readyz").await.map(|(s, _)| s), Some(200));

    // The broker stops: not ready within 5 s, still live.
    let stopped = Instant::now();
    stop();
    let took = until(addr, "/readyz", 503, Duration::from_secs(5)).await;
    let (_, why) = get(addr, "/readyz").await.expect("/readyz answers");
    eprintln!(
        "not ready {:?} after the stop returned ({:?} after it began): {}",
        took,
        stopped.elapsed(),
        why.trim()
    );
    assert_eq!(
        ready_gauge(addr).await,
        "0",
        "backstop_ready during the outage"
    );
    live_for(addr, 8).await;
    assert!(
        worker.exited().is_none(),
        "the worker stays up through the outage:\n{}",
        worker.log_tail(20)
    );

    // Back: ready within the backoff's maximum + 5 s of the broker answering.
    start();
    let took = until(addr, "/readyz", 200, back_within).await;
    eprintln!("ready {took:?} after the broker was back");
    live_for(addr, 2).await;
    assert_eq!(
        ready_gauge(addr).await,
        "1",
        "backstop_ready after the outage"
    );
}

/// Starts a worker on `broker` (its flags) consuming `name`, runs [`probe`]
/// with its broker's `stop` and `start` (restoring the broker through
/// `script` if it fails), then stops the worker with SIGTERM.
async fn probed(
    broker: &[&str],
    name: &str,
    script: &'static str,
    stop: impl FnOnce(),
    start: impl FnOnce(),
    back_within: Duration,
) {
    backstop_tests::worker::binary();
    let log = log_path(name);
    let mut flags = args(broker);
    flags.extend(args(&["--source", name, "--concurrency", "4"]));
    let mut worker = Worker::spawn_configured(
        &flags,
        &[(
            "BACKSTOP_TELEMETRY__STUCK_AFTER_SECS".to_owned(),
            STUCK_AFTER_SECS.to_owned(),
        )],
        &log,
    )
    .expect("start the worker");
    let restore = Restore(script);
    probe(&mut worker, name, stop, start, back_within).await;
    drop(restore);
    let status = worker.terminate(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the worker stops on SIGTERM: {status:?}\n{}",
        worker.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_on_rabbitmq() {
    let _lock = outage_lock(RABBITMQ_OUTAGE_LOCK)
        .await
        .expect("outage lock");
    let queue = unique("probes").replace('_', "-");
    let url = backstop_rabbitmq::url_from_env();
    probed(
        &["--broker", "rabbitmq", "--url", &url],
        &queue,
        "rabbitmq.sh",
        || run("rabbitmqctl", &["-q", "stop_app"]),
        || run("bash", &[&services("rabbitmq.sh"), "start"]),
        // The source's reconnect backoff tops out at 5 s.
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_on_kafka() {
    let _lock = outage_lock(KAFKA_OUTAGE_LOCK).await.expect("outage lock");
    let topic = unique("probes").replace('_', "-");
    let brokers = backstop_kafka::brokers_from_env();
    let group = format!("{topic}-g");
    let script = services("kafka.sh");
    probed(
        &["--broker", "kafka", "--url", &brokers, "--group", &group],
        &topic,
        "kafka.sh",
        || run("bash", &[&script, "stop"]),
        || run("bash", &[&script, "start"]),
        // librdkafka's reconnect backoff tops out at 10 s.
        Duration::from_secs(15),
    )
    .await;
}
