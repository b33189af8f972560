//! `backstop dlq` over the 100,000-letter fixtures (`common/fixture.rs`):
//! the memory a command uses does not grow with the DLQ (its peak RSS over
//! the fixture stays within a few MiB of the same command over a smaller
//! DLQ), and on RabbitMQ no more letters are unacked at once than the walk's
//! window, each for one confirmed publish.
//!
//! The RabbitMQ fixture's size comes from `BACKSTOP_CLI_RABBIT_FIXTURE_LETTERS`
//! (`scripts/test.sh` runs 20,000; a walk costs about 1 ms a letter in a
//! debug build), the Kafka one from `BACKSTOP_CLI_FIXTURE_LETTERS`.

mod common;

use std::io::BufRead as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backstop_cli::dlq::scratch::CACHE_KIB;
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

/// The letters of the smaller DLQs the fixtures are compared with: enough
/// to fill RabbitMQ's window, and librdkafka's prefetch of 1 MiB for each
/// of 4 partitions.
const SMALL_RABBIT: u64 = 1_000;
const SMALL_KAFKA: u64 = 10_000;

/// What a command may use over 100,000 letters beyond the same command over
/// a smaller DLQ (the bound `cli/README.md` states): there RabbitMQ's window
/// and librdkafka's prefetch are already full, so only the scratch indexes
/// grow until their page caches are full ([`CACHE_KIB`] each, two in
/// `list`), plus 12 MiB of slack (librdkafka's buffers and the allocator
/// vary by several MiB from run to run; the scratch index alone stays flat
/// from 100,000 to 600,000 letters). On 100,000 letters the commands of
/// the first release used 60 to 220 MiB more than on 10,000. Keeping only the ids of the
/// 90,000 more letters in memory would take about 10 MiB more.
fn bound_kib(scratches: u64) -> u64 {
    scratches * u64::from(CACHE_KIB) + 12 * 1024
}

/// A command's peak RSS, success, and stdout lines (counted from a file).
struct Run {
    peak_kib: u64,
    lines: u64,
    last: String,
}

fn measure(args: &[&str]) -> Run {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let (peak_kib, ok) = peak_rss_to(args, out.reopen().unwrap());
    assert!(ok, "backstop {args:?} failed");
    let (mut lines, mut last) = (0, String::new());
    for line in std::io::BufReader::new(out.reopen().unwrap()).lines() {
        last = line.unwrap();
        lines += 1;
    }
    eprintln!(
        "backstop {}: {peak_kib} KiB peak, {lines} lines, {:?}",
        args[..2].join(" "),
        started.elapsed()
    );
    Run {
        peak_kib,
        lines,
        last,
    }
}

fn within_bound(what: &str, empty: &Run, large: &Run, letters: u64) {
    let scratches = if what.ends_with("list") { 2 } else { 1 };
    assert!(
        large.peak_kib < empty.peak_kib + bound_kib(scratches),
        "{what}: memory grows with the DLQ: {} KiB over {} letters, {} KiB over {} letters",
        empty.peak_kib,
        empty.lines,
        large.peak_kib,
        letters
    );
}

/// The queue's `messages_unacknowledged` from the management API.
async fn unacked(queue: &str) -> Option<u64> {
    let api = "http://guest:guest@127.0.0.1:15672";
    let v = backstop_cli::rabbit_api::get_json(api, &format!("/api/queues/%2f/{queue}"))
        .await
        .ok()?;
    v["messages_unacknowledged"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_list_of_100k_letters_holds_a_window_in_bounded_memory() {
    let rabbit = RabbitMq::connect(&amqp()).await.unwrap();
    let empty = unique("rse");
    rabbit.declare(&Topology::quorum(&empty)).await.unwrap();
    fixture::fill_rabbit(&rabbit, &empty, SMALL_RABBIT).await;
    let fx = fixture::rabbit(&rabbit).await;
    let n = fixture::rabbit_size();
    let url = amqp();
    let list = move |queue: &str| measure(&["dlq", "list", "--amqp", &url, "--queue", queue]);

    let baseline = list(&empty);
    // Sample the fixture's unacked count while the walk runs.
    let most = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (most, stop, dlq) = (Arc::clone(&most), Arc::clone(&stop), fx.dlq.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop.load(Ordering::SeqCst) {
                if let Some(u) = unacked(&dlq).await {
                    most.fetch_max(u, Ordering::SeqCst);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let name = fx.name.clone();
    let large = tokio::task::spawn_blocking(move || list(&name))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let most = most.load(Ordering::SeqCst);
    eprintln!("at most {most} letters unacked in {samples} samples");

    assert_eq!(baseline.lines, SMALL_RABBIT + 2);
    assert_eq!(large.lines, n + 2, "a header, {n} rows, the count");
    assert_eq!(large.last, format!("{n} message(s)"));
    within_bound("dlq list", &baseline, &large, n);
    assert!(samples > 0, "the management API was never sampled");
    assert!(
        most <= backstop_cli::dlq::rabbit::WINDOW as u64,
        "{most} letters unacked at once (window {})",
        backstop_cli::dlq::rabbit::WINDOW
    );
    assert_eq!(
        u64::from(rabbit.message_count(&fx.dlq).await.unwrap()),
        n,
        "the walk kept every letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_list_replay_purge_of_100k_letters_use_bounded_memory() {
    let small = unique("kse");
    let empty = format!("{small}.g.dlq");
    let k = Kafka::new(brokers(), "g");
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&empty).partitions(4)])
        .await
        .unwrap();
    fixture::fill_kafka(&k, &empty, &small, SMALL_KAFKA).await;
    let fx = fixture::kafka().await;
    let n = fixture::size();
    let b = brokers();
    let target = unique("kst");
    let (dlq, e) = (fx.dlq.clone(), empty.clone());
    let runs = tokio::task::spawn_blocking(move || {
        let commands: [&[&str]; 3] = [
            &["dlq", "list"],
            &["dlq", "replay", "--dry-run", "--to", &target],
            &["dlq", "purge", "--yes", "--id", "no-such-letter"],
        ];
        commands.map(|c| {
            let run = |d: &str| measure(&[c, &["--kafka", &b, "--dlq", d]].concat());
            (c.join(" "), run(&e), run(&dlq))
        })
    })
    .await
    .unwrap();
    for (what, baseline, large) in &runs {
        within_bound(what, baseline, large, n);
    }
    let [(_, _, list), (_, _, replay), (_, _, purge)] = &runs;
    assert_eq!(list.lines, n + 2);
    assert_eq!(list.last, format!("{n} message(s)"));
    assert_eq!(replay.last, format!("would replay {n} message(s)"));
    assert_eq!(
        replay.lines,
        backstop_cli::dlq::Report::DETAIL as u64 + 2,
        "the first letters by id, '… and more', the count"
    );
    assert_eq!(purge.last, "purged 0 message(s)");
    Kafka::new(brokers(), "g")
        .topics()
        .unwrap()
        .delete(&[&empty])
        .await
        .unwrap();
}
