//! Crashes of the publishing process. A child process (this test binary run
//! again with `BACKSTOP_SPOOL_CHILD` set) spools messages for a broker it
//! cannot reach and is killed with SIGKILL; the parent then opens the same
//! spool with a real RabbitMQ publisher and checks that every message the
//! child was told was spooled arrives.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use backstop::RetryPolicy;
use backstop_spool::{Budget, RelayConfig, ReliablePublisher, Sent, Spool, SpoolConfig};
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD: &str = "BACKSTOP_SPOOL_CHILD";

fn config(path: &str) -> SpoolConfig {
    SpoolConfig::new(path).max_records(None).max_bytes(None)
}

/// Writes one line to stdout in one write, flushed (a kill never leaves half
/// of it), after a marker: libtest may have written to the same line.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{MARK}{line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

const MARK: &str = "@@";

/// What the child said on `line`, if anything.
fn said(line: &str) -> Option<&str> {
    line.split_once(MARK).map(|(_, said)| said)
}

/// The child's side: only runs when this binary was started by a test below.
#[test]
fn spool_child() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let (path, queue, run) = (var("SPOOL_PATH"), var("SPOOL_QUEUE"), var("SPOOL_RUN"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let broker = Switch::default();
        broker.set(Mode::Down);
        let publisher = ReliablePublisher::builder(broker, config(&path))
            .budget(Budget::new(RetryPolicy::none(), Duration::from_millis(100)))
            .relay(RelayConfig::default().backoff(Duration::from_secs(1), Duration::from_secs(1)))
            .open()
            .await
            .unwrap();
        match mode.as_str() {
            "fill" => {
                let n: usize = var("SPOOL_N").parse().unwrap();
                for m in messages(&run, n, 8) {
                    assert_eq!(publisher.publish(&queue, &m).await.unwrap(), Sent::Spooled);
                }
                say("FILLED");
            }
            "burst" => {
                let tasks = (0..4).map(|task| {
                    let publisher = publisher.clone();
                    let (queue, run) = (queue.clone(), run.clone());
                    tokio::spawn(async move {
                        for i in 0.. {
                            let id = format!("{run}-{task}-{i}");
                            let m = backstop::Message::new(format!(r#"{{"i":{i}}}"#))
                                .with_message_id(id.clone())
                                .with_key(format!("{run}-{task}"))
                                .with_header("seq", i.to_string())
                                .with_header("okey", format!("{run}-{task}"));
                            assert_eq!(publisher.publish(&queue, &m).await.unwrap(), Sent::Spooled);
                            say(&format!("S {id}"));
                        }
                    })
                });
                let _ = futures::future::join_all(tasks).await;
            }
            other => panic!("unknown child mode {other}"),
        }
        // Wait for the kill.
        std::future::pending::<()>().await;
    });
}

/// Starts the child in `mode`; its stdout is piped.
fn spawn_child(mode: &str, path: &str, queue: &str, run: &str, n: usize) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, mode)
        .env("SPOOL_PATH", path)
        .env("SPOOL_QUEUE", queue)
        .env("SPOOL_RUN", run)
        .env("SPOOL_N", n.to_string())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child")
}

/// Reads whole lines (ending in a newline) until `stop` says so or the pipe closes.
async fn read_lines(
    lines: &mut BufReader<tokio::process::ChildStdout>,
    mut stop: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return out,
            Ok(_) if line.ends_with('\n') => {
                let l = line.trim_end().to_owned();
                let done = stop(&l);
                out.push(l);
                if done {
                    return out;
                }
            }
            Ok(_) => return out, // a partial last line: the kill came mid-write
        }
    }
}

async fn kill_9(child: &mut tokio::process::Child) {
    child.start_kill().expect("SIGKILL the child"); // SIGKILL on Unix
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the child was killed: {status}");
}

/// Opens the spool with the real broker, waits until it is relayed, and reads the queue.
async fn relay_and_read(path: &str, queue: &str, expected: usize) -> Vec<backstop::Message> {
    let rabbit = rabbit::connect().await;
    let publisher = ReliablePublisher::builder(rabbit.publisher(), config(path))
        .relay(quick_relay())
        .open()
        .await
        .unwrap();
    let waiting = publisher.spool().len();
    publisher
        .flush(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{waiting} records to relay: {e}"));
    publisher.close().await.unwrap();
    rabbit::drain(&rabbit, queue, expected, Duration::from_secs(3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_records_in_the_spool_loses_none() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.spool").to_string_lossy().into_owned();
    let rabbit = rabbit::connect().await;
    let queue = rabbit::queue(&rabbit, "kill").await;
    let n = 3_000;

    let mut child = spawn_child("fill", &path, &queue, "kill", n);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = tokio::time::timeout(
        Duration::from_secs(60),
        read_lines(&mut out, |l| said(l) == Some("FILLED")),
    )
    .await
    .expect("the child spools its messages within a minute");
    assert_eq!(lines.last().and_then(|l| said(l)), Some("FILLED"));
    kill_9(&mut child).await;

    // The lock died with the process; the spool holds everything.
    let spool = Spool::open(config(&path)).await.unwrap();
    assert_eq!(spool.len(), n as u64);
    spool.close().await.unwrap();

    let arrived = relay_and_read(&path, &queue, n).await;
    let expected = messages("kill", n, 8);
    assert_eq!(
        missing(
            expected.iter().map(|m| m.meta.message_id.as_str()),
            &arrived
        ),
        Vec::<String>::new()
    );
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
    rabbit::delete(&rabbit, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_in_the_middle_of_spooled_bursts_lose_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.spool").to_string_lossy().into_owned();
    let rabbit = rabbit::connect().await;
    let queue = rabbit::queue(&rabbit, "cut").await;
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut spooled_ever = 0u64;

    for round in 0..20 {
        let mut child = spawn_child("burst", &path, &queue, &format!("r{round}"), 0);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Wait until the burst is under way, then cut at a random moment.
        let first = tokio::time::timeout(
            Duration::from_secs(30),
            read_lines(&mut out, |l| said(l).is_some_and(|s| s.starts_with("S "))),
        )
        .await
        .expect("the child starts spooling");
        let jitter =
            u64::from_str_radix(&backstop::message::new_message_id()[..4], 16).unwrap() % 200;
        tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
        kill_9(&mut child).await;
        // Everything printed before the kill is still in the pipe.
        let rest = read_lines(&mut out, |_| false).await;
        let printed: Vec<String> = first
            .into_iter()
            .chain(rest)
            .filter_map(|l| {
                said(&l)
                    .and_then(|s| s.strip_prefix("S "))
                    .map(str::to_owned)
            })
            .collect();
        assert!(!printed.is_empty());

        // After each cut the spool opens cleanly and holds every acknowledged write.
        let spool = Spool::open(config(&path)).await.unwrap();
        let held: BTreeSet<String> = spool
            .peek(usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message.meta.message_id)
            .collect();
        let lost: Vec<_> = printed
            .iter()
            .filter(|id| !held.contains(*id))
            .take(5)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but not in the spool: {lost:?}"
        );
        spooled_ever = spool.len();
        spool.close().await.unwrap();
        acknowledged.extend(printed);
    }
    eprintln!(
        "{} acknowledged spooled writes over 20 cuts ({spooled_ever} in the spool)",
        acknowledged.len()
    );

    let arrived = relay_and_read(&path, &queue, spooled_ever as usize).await;
    let lost: Vec<_> = missing(acknowledged.iter().map(String::as_str), &arrived);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes never arrived: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
    rabbit::delete(&rabbit, &queue).await;
}
