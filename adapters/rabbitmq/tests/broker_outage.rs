//! Broker restarts and closed connections. These tests disturb every client
//! of the broker, so they live in their own test binary and run one at a
//! time: a process-wide lock, and a file lock (`/tmp/backstop-rabbitmq-outage.lock`)
//! that other suites disturbing the same broker can take too.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backstop::delivery::Delivery;
use backstop::publish::{PublishError, Publisher};
use backstop::runner::{Source, SourceError};
use backstop::{
    CancellationToken, Context, HandlerError, Message, Runner, StackBuilder, Summary, handler_fn,
};
use backstop_rabbitmq::{ConnectOptions, RabbitMq, RabbitSource, Topology, url_from_env};
use common::{Seen, cleanup, eventually, publish_numbered, quorum, unique};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LOCK_FILE: &str = "/tmp/backstop-rabbitmq-outage.lock";

/// Holds both locks for the length of a test.
struct Exclusive {
    _file: std::fs::File,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

async fn exclusive() -> Exclusive {
    let guard = SERIAL.lock().await;
    let file = tokio::task::spawn_blocking(|| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .expect("open the lock file");
        file.lock().expect("lock the lock file");
        file
    })
    .await
    .unwrap();
    Exclusive {
        _file: file,
        _guard: guard,
    }
}

async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

async fn stop_app() {
    let t = std::time::Instant::now();
    rabbitmqctl(&["stop_app"]).await;
    eprintln!("stop_app took {:?}", t.elapsed());
}

/// Starts the app and waits until AMQP answers again.
async fn start_app() {
    let t = std::time::Instant::now();
    rabbitmqctl(&["start_app"]).await;
    eprintln!("start_app took {:?}", t.elapsed());
    for _ in 0..300 {
        if RabbitMq::connect(url_from_env()).await.is_ok() {
            eprintln!("AMQP back after {:?}", t.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the broker did not come back");
}

/// Closes every connection whose client-provided name starts with `prefix`; returns how many.
async fn close_connections(prefix: &str) -> usize {
    // The JSON listing shows client properties; the table listing shows pids as close_connection takes them.
    let json = rabbitmqctl(&[
        "list_connections",
        "-q",
        "name",
        "client_properties",
        "--formatter",
        "json",
    ])
    .await;
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&json).expect("rabbitmqctl prints JSON");
    let needle = format!("\"{prefix}");
    let names: Vec<String> = entries
        .iter()
        .filter(|entry| entry["client_properties"].to_string().contains(&needle))
        .filter_map(|entry| entry["name"].as_str().map(str::to_owned))
        .collect();
    let table = rabbitmqctl(&["list_connections", "-s", "pid", "name"]).await;
    let pids: Vec<String> = table
        .lines()
        .filter_map(|line| {
            let (pid, name) = line.split_once('\t')?;
            names
                .iter()
                .any(|n| n == name.trim())
                .then(|| pid.trim().to_owned())
        })
        .collect();
    for pid in &pids {
        rabbitmqctl(&[
            "close_connection",
            pid,
            "backstop test: closing the connection",
        ])
        .await;
    }
    pids.len()
}

/// Counts the losses the source reports on their way to the runner.
struct Counting {
    inner: RabbitSource,
    disconnects: Arc<AtomicU32>,
}

impl Source for Counting {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        let next = self.inner.next().await;
        if let Some(Err(SourceError::Disconnected(_))) = &next {
            self.disconnects.fetch_add(1, Ordering::SeqCst);
        }
        next
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

async fn named_rabbit(name: &str) -> RabbitMq {
    let options = ConnectOptions::default()
        .connection_name(name)
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1));
    RabbitMq::connect_with(url_from_env(), options)
        .await
        .unwrap()
}

/// A worker recording every message id it handled; while `hold` is set its
/// handlers wait, keeping their deliveries in flight.
fn spawn_worker(
    rabbit: &RabbitMq,
    source: RabbitSource,
    seen: &Seen,
    hold: &Arc<AtomicBool>,
    concurrency: usize,
) -> (
    CancellationToken,
    Arc<AtomicU32>,
    tokio::task::JoinHandle<Summary>,
) {
    let seen = seen.clone();
    let hold = Arc::clone(hold);
    let handler = handler_fn(move |_v: serde_json::Value, ctx: Context| {
        let (seen, hold) = (seen.clone(), Arc::clone(&hold));
        async move {
            while hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen.insert(ctx.message_id());
            Ok::<_, HandlerError>(())
        }
    });
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .nack_delay(Duration::from_millis(100))
        .build(handler);
    let disconnects = Arc::new(AtomicU32::new(0));
    let source = Counting {
        inner: source,
        disconnects: Arc::clone(&disconnects),
    };
    let shutdown = CancellationToken::new();
    let runner = Runner::new(source, stack)
        .concurrency(concurrency)
        .with_shutdown(shutdown.clone());
    let task =
        tokio::spawn(async move { runner.run().await.expect("the run survives the outage") });
    (shutdown, disconnects, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_a_broker_restart_and_loses_nothing() {
    const N: usize = 10_000;
    let _exclusive = exclusive().await;
    let name = unique("restart");
    let rabbit = named_rabbit(&name).await;
    let topology = quorum(&rabbit, "restart").await;
    let run = unique("run");
    publish_numbered(&rabbit.publisher(), topology.queue(), &run, N).await;

    let seen = Seen::default();
    let hold = Arc::new(AtomicBool::new(false));
    let source = rabbit.source(topology.queue(), 32).await.unwrap();
    let (shutdown, disconnects, worker) = spawn_worker(&rabbit, source, &seen, &hold, 32);
    assert!(eventually(Duration::from_secs(60), || seen.len() >= 2_000).await);
    // Restart with deliveries in flight: their acks fail, the broker redelivers them.
    hold.store(true, Ordering::SeqCst);
    let during = seen.len();
    stop_app().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    start_app().await;
    hold.store(false, Ordering::SeqCst);
    let all = eventually(Duration::from_secs(120), || seen.len() == N).await;
    shutdown.cancel();
    let summary = worker.await.unwrap();
    assert!(
        all,
        "missing {} messages: {summary}",
        seen.missing(&run, N).len()
    );
    assert!(
        during < N,
        "the restart happened mid-run ({during} of {N} handled)"
    );
    assert_eq!(
        disconnects.load(Ordering::SeqCst),
        1,
        "one loss, reported once: {summary}"
    );
    assert!(
        summary.ack_failed >= 1,
        "the in-flight acks failed harmlessly: {summary}"
    );
    assert!(seen.missing(&run, N).is_empty());
    let mut left = u32::MAX;
    for _ in 0..50 {
        left = rabbit.message_count(topology.queue()).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "everything acked: {summary}");
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_its_connection_being_closed() {
    const N: usize = 3_000;
    let _exclusive = exclusive().await;
    let name = unique("closed");
    let rabbit = named_rabbit(&name).await;
    let topology = quorum(&rabbit, "closed").await;
    let run = unique("run");
    publish_numbered(&rabbit.publisher(), topology.queue(), &run, N).await;

    let seen = Seen::default();
    let hold = Arc::new(AtomicBool::new(false));
    let source = rabbit.source(topology.queue(), 16).await.unwrap();
    let (shutdown, disconnects, worker) = spawn_worker(&rabbit, source, &seen, &hold, 16);
    for (i, at) in [500, 1_500].into_iter().enumerate() {
        assert!(eventually(Duration::from_secs(30), || seen.len() >= at).await);
        hold.store(true, Ordering::SeqCst);
        assert_eq!(close_connections(&format!("{name}-consumer")).await, 1);
        hold.store(false, Ordering::SeqCst);
        assert!(
            eventually(
                Duration::from_secs(10),
                || disconnects.load(Ordering::SeqCst) as usize == i + 1
            )
            .await,
            "the loss is reported"
        );
    }
    let all = eventually(Duration::from_secs(60), || seen.len() == N).await;
    shutdown.cancel();
    let summary = worker.await.unwrap();
    assert!(
        all,
        "missing {} messages: {summary}",
        seen.missing(&run, N).len()
    );
    assert_eq!(disconnects.load(Ordering::SeqCst), 2, "{summary}");
    assert!(
        summary.ack_failed >= 2,
        "the in-flight acks failed harmlessly: {summary}"
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_fails_cleanly_while_the_broker_is_down_and_reconnects_after() {
    let _exclusive = exclusive().await;
    let rabbit = named_rabbit(&unique("pub")).await;
    let topology: Topology = quorum(&rabbit, "pub-restart").await;
    let publisher = rabbit.publisher();
    publisher
        .publish(topology.queue(), &Message::new("before"))
        .await
        .unwrap();

    stop_app().await;
    let down = tokio::time::timeout(
        Duration::from_secs(15),
        publisher.publish(topology.queue(), &Message::new("down")),
    )
    .await
    .expect("a publish to a stopped broker fails, it does not hang");
    assert!(
        matches!(down, Err(PublishError::Unavailable(_))),
        "{down:?}"
    );
    start_app().await;

    publisher
        .publish(topology.queue(), &Message::new("after"))
        .await
        .expect("the publisher reopens its connection and channel");
    assert_eq!(
        rabbit.message_count(topology.queue()).await.unwrap(),
        2,
        "both confirmed messages survived"
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirm_within_the_timeout_is_a_timeout() {
    let _exclusive = exclusive().await;
    let rabbit = named_rabbit(&unique("blocked")).await;
    let topology = quorum(&rabbit, "blocked").await;
    let publisher = rabbit
        .publisher()
        .with_confirm_timeout(Duration::from_millis(500));
    publisher
        .publish(topology.queue(), &Message::new("before"))
        .await
        .unwrap();
    // A memory alarm: the broker blocks publishing connections, no confirm comes.
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]).await;
    let blocked = publisher
        .publish(topology.queue(), &Message::new("blocked"))
        .await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]).await;
    assert!(
        matches!(blocked, Err(PublishError::Timeout(d)) if d == Duration::from_millis(500)),
        "{blocked:?}"
    );
    publisher
        .publish(topology.queue(), &Message::new("after"))
        .await
        .expect("publishing works again once the alarm clears");
    cleanup(&rabbit, &topology).await;
}
