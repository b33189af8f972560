//! Helpers shared by the CLI's broker tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::runner::Source;
use backstop::{Context, HandlerError, Runner, Stack};

pub mod console;
pub mod fixture;

pub fn amqp() -> String {
    std::env::var("BACKSTOP_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn brokers() -> String {
    backstop_kafka::brokers_from_env()
}

/// The number of letters in `topic`'s DLQ for `k`'s group.
pub async fn dlq_len(k: &backstop_kafka::Kafka, topic: &str) -> i64 {
    k.topics()
        .unwrap()
        .end_offsets(&k.dlq_topic(topic))
        .await
        .unwrap()
        .values()
        .sum()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "bt-cli-{prefix}-{}",
        &backstop::message::new_message_id()[..10]
    )
}

/// A Redis idempotency store for the test's queue `q` (keys under `<q>:`).
pub async fn redis_store(q: &str) -> backstop_redis::RedisStore {
    let redis =
        std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    backstop_redis::RedisStore::connect_with(
        backstop_redis::RedisConfig::new(redis)
            .prefix(format!("{q}:"))
            .ttl(Duration::from_secs(600)),
    )
    .await
    .unwrap()
}

/// Marks `ids` in `store` as the worker that dead-lettered them does, so
/// each runs only as its next redrive, once.
pub async fn mark_dead_lettered(store: &backstop_redis::RedisStore, ids: &[String]) {
    use backstop::idempotency::{Claim, Key, Store as _};
    futures::future::try_join_all(ids.iter().map(|id| {
        let store = store.clone();
        async move {
            let key = Key::new(id);
            let Claim::Acquired { fence, .. } = store
                .claim(&key, "dead-lettering worker", Duration::from_secs(60), 0)
                .await?
            else {
                panic!("{id} was claimed before");
            };
            assert!(store.mark_dead_lettered(&key, fence).await?);
            Ok::<_, backstop::error::StoreError>(())
        }
    }))
    .await
    .unwrap();
}

/// Runs the binary; returns its output.
pub fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .output()
        .expect("run backstop")
}

/// Runs the binary and expects success; returns stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "backstop {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error texts by payload number: n % 4 == 0 is not JSON (a decode failure).
pub fn error_for(n: u64) -> &'static str {
    match n % 4 {
        1 => "card declined",
        2 => "address invalid",
        _ => "out of stock",
    }
}

pub fn payload(n: u64) -> String {
    if n.is_multiple_of(4) {
        format!("not json {n}")
    } else {
        format!("{{\"n\":{n}}}")
    }
}

/// What the test worker did.
#[derive(Default)]
pub struct Worker {
    pub fail: std::sync::atomic::AtomicBool,
    pub handled: Mutex<Vec<String>>,
    pub runs: std::sync::atomic::AtomicUsize,
}

/// The handler: counts runs; fails permanently with `error_for(n)` while
/// `fail` is set, else records the message id as handled.
pub fn handler(
    state: Arc<Worker>,
) -> impl Fn(
    serde_json::Value,
    Context,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |value: serde_json::Value, ctx: Context| {
        let state = Arc::clone(&state);
        Box::pin(async move {
            state.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if state.fail.load(std::sync::atomic::Ordering::SeqCst) {
                let n = value["n"].as_u64().unwrap_or(0);
                return Err(HandlerError::permanent(error_for(n)));
            }
            state
                .handled
                .lock()
                .unwrap()
                .push(ctx.message_id().to_owned());
            Ok(())
        })
    }
}

/// Runs `source` through `stack` until `done()` holds (or `limit` passes), then shuts down.
pub async fn run_until<S, F, Fut>(source: S, stack: Stack, limit: Duration, done: F)
where
    S: Source + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let runner = Runner::new(source, stack)
        .concurrency(8)
        .shutdown_deadline(Duration::from_secs(5));
    let token = runner.shutdown_token();
    let task = tokio::spawn(runner.run());
    let until = Instant::now() + limit;
    while !done().await && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    let _ = task.await;
}

pub fn ids(lines: &str) -> BTreeSet<String> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message_id"].as_str().map(str::to_owned))
        .collect()
}

/// A dead letter of message `id` (payload `payload(n)`) consumed from `source`.
pub fn letter(source: &str, id: &str, n: u64, replayed: u32) -> backstop::Message {
    let mut m = backstop::Message::new(payload(n)).with_message_id(id);
    m.meta.source = source.into();
    if replayed > 0 {
        m.headers
            .insert(backstop::wire::REPLAYED.to_owned(), replayed.to_string());
    }
    let now = std::time::SystemTime::now();
    backstop::copy::dead_letter(
        &m,
        &backstop::error::Failure {
            kind: backstop::ErrorKind::Permanent,
            message: error_for(n).to_owned(),
            attempts: 1,
            first_failure: now,
            last_failure: now,
        },
    )
}

/// Runs the binary with `args` and returns its peak resident memory in KiB
/// (VmHWM, sampled until it exits) and whether it succeeded.
pub fn peak_rss_kib(args: &[&str]) -> (u64, bool) {
    peak_rss_to(args, std::process::Stdio::null())
}

/// [`peak_rss_kib`] with the command's stdout going to `stdout`.
///
/// glibc's allocator is limited to two arenas (`MALLOC_ARENA_MAX=2`): with
/// one arena per thread, which threads happened to allocate moves the peak
/// by several MiB from run to run, which would drown what is measured.
pub fn peak_rss_to(args: &[&str], stdout: impl Into<std::process::Stdio>) -> (u64, bool) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let until = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status.success());
        }
        assert!(std::time::Instant::now() < until, "backstop {args:?} hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills `child` (SIGKILL) once `moved()` counts at least two letters
/// redriven to the target, checking every 20 ms that it still runs;
/// fails if it exits first or 60 s pass. Kill on observed progress, not
/// after a fixed time: the first redrive waits for the binary's start and
/// its connections.
pub async fn kill_after_two_moved<F, Fut, N>(child: &mut std::process::Child, mut moved: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = N>,
    N: Into<i64>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let moved: i64 = moved().await.into();
        if moved >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay exited before it redrove 2 letters ({moved} moved)"
        );
        assert!(
            Instant::now() < deadline,
            "the replay redrove {moved} letter(s) in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
}
