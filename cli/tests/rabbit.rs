//! `backstop dlq` against the real RabbitMQ.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop::idempotency::KeySource;
use backstop::idempotency::MemoryStore;
use backstop::{StackBuilder, handler_fn};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

async fn rabbit() -> RabbitMq {
    RabbitMq::connect(amqp())
        .await
        .expect("RabbitMQ is reachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_replay_redrives_exactly_the_selected_letters() {
    let rabbit = rabbit().await;
    let q = unique("rq");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let publisher = rabbit.publisher();
    for n in 0..100u64 {
        let m = backstop::Message::new(payload(n)).with_message_id(format!("{q}-{n}"));
        publisher.publish_to_queue(&q, &m).await.unwrap();
    }
    let store = Arc::new(MemoryStore::new(10_000, Duration::from_secs(600)));
    let state = Arc::new(Worker::default());
    state.fail.store(true, Ordering::SeqCst);
    let stack = || {
        StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
            .idempotency(store.clone(), KeySource::MessageId)
            .build(handler_fn(handler(Arc::clone(&state))))
    };
    let dlq = format!("{q}.dlq");
    run_until(
        rabbit.source(&q, 8).await.unwrap(),
        stack(),
        Duration::from_secs(60),
        || async { rabbit.message_count(&dlq).await.unwrap() >= 100 },
    )
    .await;
    assert_eq!(settled_count(&rabbit, &dlq, 100).await, 100);

    let url = amqp();
    let base = ["--amqp", url.as_str(), "--queue", q.as_str()];
    let list = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "--json"];
        args.extend(base);
        args.extend(extra);
        ids(&cli_ok(&args))
    };
    let expect = |r: u64| -> BTreeSet<String> {
        (0..100)
            .filter(|n| n % 4 == r)
            .map(|n| format!("{q}-{n}"))
            .collect()
    };
    assert_eq!(list(&[]).len(), 100);
    assert_eq!(list(&["--error", "Card Declined"]), expect(1));
    assert_eq!(list(&["--kind", "decode"]), expect(0));
    assert_eq!(
        list(&["--source", q.as_str(), "--error", "stock"]),
        expect(3)
    );
    assert!(list(&["--since", "2100-01-01T00:00:00Z"]).is_empty());
    let table = cli_ok(&[&["dlq", "list"][..], &base[..]].concat());
    assert!(
        table.contains("MESSAGE ID") && table.contains("100 message(s)"),
        "{table}"
    );

    let id = format!("{q}-1");
    let shown = cli_ok(&[&["dlq", "show", id.as_str()][..], &base[..]].concat());
    assert!(
        shown.contains("card declined") && shown.contains("\"n\": 1"),
        "{shown}"
    );
    let file = std::env::temp_dir().join(format!("{q}.jsonl"));
    let path = file.to_str().unwrap();
    cli_ok(&[&["dlq", "export", "--out", path][..], &base[..]].concat());
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 100);
    assert!(
        exported.contains("\"payload\":\"not json 0\"")
            && exported.contains("\"payload_encoding\":\"utf8\"")
    );
    let _ = std::fs::remove_file(&file);
    // Scanning left every letter in place.
    assert_eq!(settled_count(&rabbit, &dlq, 100).await, 100);

    let dry = cli_ok(
        &[
            &["dlq", "replay", "--dry-run", "--error", "card declined"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(dry.contains("would replay 25"), "{dry}");
    let out = cli_ok(
        &[
            &["dlq", "replay", "--error", "card declined"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(out.contains("replayed 25 message(s)"), "{out}");
    assert_eq!(settled_count(&rabbit, &dlq, 75).await, 75);

    // The worker runs them again: the idempotency store admits the redriven copies.
    state.fail.store(false, Ordering::SeqCst);
    run_until(
        rabbit.source(&q, 8).await.unwrap(),
        stack(),
        Duration::from_secs(30),
        || async { state.handled.lock().unwrap().len() >= 25 },
    )
    .await;
    let handled: BTreeSet<String> = state.handled.lock().unwrap().iter().cloned().collect();
    assert_eq!(handled, expect(1));
    assert_eq!(settled_count(&rabbit, &dlq, 75).await, 75);
    assert_eq!(list(&["--error", "card declined"]).len(), 0);

    // Purge needs --yes and a filter.
    assert!(
        !cli(&[&["dlq", "purge", "--kind", "decode"][..], &base[..]].concat())
            .status
            .success()
    );
    assert!(
        !cli(&[&["dlq", "purge", "--yes"][..], &base[..]].concat())
            .status
            .success()
    );
    let purged = cli_ok(
        &[
            &["dlq", "purge", "--yes", "--kind", "decode"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(purged.contains("purged 25"), "{purged}");
    assert_eq!(settled_count(&rabbit, &dlq, 50).await, 50);
    assert_eq!(list(&[]), &expect(2) | &expect(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_and_loses_nothing() {
    let rabbit = rabbit().await;
    let q = unique("rk");
    let target = unique("rt");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    rabbit.declare(&Topology::quorum(&target)).await.unwrap();
    let publisher = rabbit.publisher();
    let dlq = format!("{q}.dlq");
    for n in 0..40u64 {
        publisher
            .publish_to_queue(&dlq, &letter(&q, &format!("{q}-{n}"), n, 0))
            .await
            .unwrap();
    }
    let url = amqp();
    let args = [
        "dlq",
        "replay",
        "--amqp",
        url.as_str(),
        "--queue",
        q.as_str(),
        "--to",
        target.as_str(),
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .args(["--rate", "15"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill on observed progress, not after a fixed time: the first redrive
    // waits for the binary's start and its connection. With a `--rate` the
    // walk holds one letter at a time and the broker sends the next only
    // after the last one's ack, so two copies in the target mean the first
    // letter was acked; at 15/s the other 38 still take about 2.5 s.
    kill_after_two_moved(&mut child, || async {
        rabbit.message_count(&target).await.unwrap()
    })
    .await;
    // A letter delivered to the walk and not acked goes back to the ready
    // count once the broker has seen the connection close, which also drops
    // the walk's consumer: counted after that, not after a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while consumers(&rabbit, &dlq).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed replay's consumer is still on {dlq} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = rabbit.message_count(&dlq).await.unwrap();
    assert!(
        left > 0 && left < 40,
        "the replay was cut halfway: {left} left"
    );

    cli_ok(&args);
    assert_eq!(settled_count(&rabbit, &dlq, 0).await, 0);
    let moved = ids(&cli_ok(&[
        "dlq", "list", "--json", "--amqp", &url, "--dlq", &target,
    ]));
    let all: BTreeSet<String> = (0..40).map(|n| format!("{q}-{n}")).collect();
    assert_eq!(moved, all, "every letter reached the destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_guard_refuses_letters_replayed_too_often() {
    let rabbit = rabbit().await;
    let q = unique("rg");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let publisher = rabbit.publisher();
    let dlq = format!("{q}.dlq");
    publisher
        .publish_to_queue(&dlq, &letter(&q, "looping", 1, 3))
        .await
        .unwrap();
    publisher
        .publish_to_queue(&dlq, &letter(&q, "fresh", 2, 1))
        .await
        .unwrap();
    let url = amqp();
    let out = cli_ok(&["dlq", "replay", "--amqp", &url, "--queue", &q]);
    assert!(
        out.contains("refused looping") && out.contains("replayed 1 message(s)"),
        "{out}"
    );
    assert_eq!(
        ids(&cli_ok(&[
            "dlq", "list", "--json", "--amqp", &url, "--queue", &q
        ])),
        BTreeSet::from(["looping".to_owned()])
    );
    assert_eq!(settled_count(&rabbit, &q, 1).await, 1);
    let got = ids(&cli_ok(&[
        "dlq", "list", "--json", "--amqp", &url, "--dlq", &q,
    ]));
    assert_eq!(got, BTreeSet::from(["fresh".to_owned()]));
    let shown = cli_ok(&["dlq", "list", "--json", "--amqp", &url, "--dlq", &q]);
    assert!(
        shown.contains("\"replayed\":2") && shown.contains("\"x-backstop-attempt\":\"1\""),
        "{shown}"
    );
    let out = cli_ok(&[
        "dlq",
        "replay",
        "--max-replays",
        "5",
        "--amqp",
        &url,
        "--queue",
        &q,
    ]);
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    assert_eq!(settled_count(&rabbit, &dlq, 0).await, 0);
}

#[test]
fn errors_are_one_line_and_hide_the_password() {
    let out = cli(&[
        "dlq",
        "list",
        "--amqp",
        "amqp://guest:sekret@127.0.0.1:5672/%2f",
        "--queue",
        "x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("sekret") && err.contains("***"), "{err}");
    let out = cli(&[
        "dlq",
        "list",
        "--amqp",
        &amqp(),
        "--queue",
        "bt-cli-no-such-queue",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not exist"),
        "{err}"
    );
}

/// The queue's ready count once it reaches `expected` or stops moving:
/// requeues of a closed scan reach a quorum queue's count asynchronously.
async fn settled_count(rabbit: &backstop_rabbitmq::RabbitMq, queue: &str, expected: u32) -> u32 {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = rabbit.message_count(queue).await.unwrap();
        if count == expected || tokio::time::Instant::now() >= until {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many consumers `queue` has, as the broker counts them.
async fn consumers(rabbit: &RabbitMq, queue: &str) -> u32 {
    use backstop_rabbitmq::lapin::options::QueueDeclareOptions;
    use backstop_rabbitmq::lapin::types::FieldTable;
    let channel = rabbit.channel().await.unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap();
    let _ = channel.close(200, "OK".into()).await;
    declared.consumer_count()
}

/// A message on `queue` as the raw properties a publisher wrote, for copies.
async fn publish_copies(rabbit: &RabbitMq, dlq: &str, letter: &backstop::Message, copies: usize) {
    let publisher = rabbit.publisher();
    for _ in 0..copies {
        publisher.publish_to_queue(dlq, letter).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_letter_are_one_letter() {
    let rabbit = rabbit().await;
    let q = unique("rc");
    let target = unique("rct");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    rabbit.declare(&Topology::quorum(&target)).await.unwrap();
    let dlq = format!("{q}.dlq");
    publish_copies(&rabbit, &dlq, &letter(&q, "twice", 1, 0), 2).await;
    publish_copies(&rabbit, &dlq, &letter(&q, "once", 2, 0), 1).await;
    publish_copies(&rabbit, &dlq, &letter(&q, "thrice", 3, 0), 3).await;
    let url = amqp();
    let base = ["--amqp", url.as_str(), "--queue", q.as_str()];
    let json = cli_ok(&[&["dlq", "list", "--json"][..], &base[..]].concat());
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{json}");
    let copies = |id: &str| {
        rows.iter()
            .find(|r| r["message_id"] == id)
            .map(|r| r["copies"].as_u64().unwrap_or(1))
    };
    assert_eq!(copies("twice"), Some(2), "{json}");
    assert_eq!(copies("once"), Some(1), "{json}");
    assert_eq!(copies("thrice"), Some(3), "{json}");
    let table = cli_ok(&[&["dlq", "list"][..], &base[..]].concat());
    assert!(
        table.contains("twice (2 copies)") && table.contains("3 message(s)"),
        "{table}"
    );
    // Listing changed nothing.
    assert_eq!(settled_count(&rabbit, &dlq, 6).await, 6);

    let out = cli_ok(
        &[
            &["dlq", "replay", "--id", "twice", "--to", target.as_str()][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    assert_eq!(settled_count(&rabbit, &target, 1).await, 1, "one redrive");
    assert_eq!(settled_count(&rabbit, &dlq, 4).await, 4, "both copies gone");

    let out = cli_ok(&[&["dlq", "purge", "--yes", "--id", "thrice"][..], &base[..]].concat());
    assert!(out.contains("purged 1 message(s)"), "{out}");
    assert_eq!(
        settled_count(&rabbit, &dlq, 1).await,
        1,
        "all three copies gone"
    );
    assert_eq!(
        ids(&cli_ok(
            &[&["dlq", "list", "--json"][..], &base[..]].concat()
        )),
        BTreeSet::from(["once".to_owned()])
    );
}

/// A slow replay (rate-limited, longer than the hold budget) never holds
/// the letters it keeps: they go back to the queue at once, so the DLQ's
/// ready count plus what reached the target never drops by more than the
/// one letter being settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replay_holds_at_most_one_letter_within_the_budget() {
    let rabbit = rabbit().await;
    let q = unique("rb");
    let target = unique("rbt");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    rabbit.declare(&Topology::quorum(&target)).await.unwrap();
    let dlq = format!("{q}.dlq");
    let publisher = rabbit.publisher();
    let total = 16u32;
    for n in 0..u64::from(total) {
        publisher
            .publish_to_queue(&dlq, &letter(&q, &format!("{q}-{n}"), n, 0))
            .await
            .unwrap();
    }
    let url = amqp();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args([
            "dlq",
            "replay",
            "--amqp",
            &url,
            "--queue",
            &q,
            "--to",
            &target,
            "--error",
            "card declined",
            "--rate",
            "5",
            "--hold-budget",
            "2s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut lowest = total;
    while child.try_wait().unwrap().is_none() {
        let in_dlq = rabbit.message_count(&dlq).await.unwrap();
        let moved = rabbit.message_count(&target).await.unwrap();
        lowest = lowest.min(in_dlq + moved);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(60), "replay hangs");
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the walk outlasted the budget"
    );
    assert!(
        lowest + 1 >= total,
        "letters were held unacked: only {lowest} of {total} visible at one point"
    );
    assert_eq!(settled_count(&rabbit, &target, 4).await, 4);
    assert_eq!(settled_count(&rabbit, &dlq, total - 4).await, total - 4);
}

/// Kills `backstop dlq replay` with SIGKILL at random points of a
/// 10,000-letter redrive (`BACKSTOP_CLI_KILL_LETTERS`) until it finishes,
/// then runs a worker with a Redis idempotency store over the source: every
/// letter runs exactly once. The letters were dead-lettered under that store
/// (their keys are `dead_lettered`), so a copy runs only as the next redrive
/// (`x-backstop-replayed: 1`) of its message id, once: a copy republished
/// after a lost ack is suppressed. A redrive with new message ids would run
/// such copies twice; one without the replay count would run nothing.
/// The kill points come from `BACKSTOP_CLI_KILL_SEED` (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_killed_at_random_points_runs_every_letter_once() {
    let total: u64 = std::env::var("BACKSTOP_CLI_KILL_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rabbit = rabbit().await;
    let q = unique("rx");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let dlq = format!("{q}.dlq");
    let store = redis_store(&q).await;
    let publisher = rabbit.publisher();
    let ids: Vec<String> = (0..total).map(|i| format!("{q}-{i}")).collect();
    for chunk in ids.chunks(1000) {
        // The worker that dead-lettered them marked their keys.
        mark_dead_lettered(&store, chunk).await;
        // n = 4i + 1: JSON payloads the worker can decode.
        futures::future::try_join_all(chunk.iter().map(|id| {
            let i: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
            let m = letter(&q, id, 4 * i + 1, 0);
            let (publisher, dlq) = (publisher.clone(), dlq.clone());
            async move { publisher.publish_to_queue(&dlq, &m).await }
        }))
        .await
        .unwrap();
    }
    let url = amqp();
    let args = [
        "dlq",
        "replay",
        "--amqp",
        url.as_str(),
        "--queue",
        q.as_str(),
    ];
    let mut seed: u64 = std::env::var("BACKSTOP_CLI_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos(),
            )
        });
    eprintln!("kill points from BACKSTOP_CLI_KILL_SEED={seed}");
    let mut kills = 0;
    while kills < 4 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill while redrives are under way: once this run moved letters,
        // after a random further delay.
        let before = rabbit.message_count(&q).await.unwrap();
        let mut exited = false;
        while rabbit.message_count(&q).await.unwrap() == before {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis((seed >> 33) % 800)).await;
        if exited || child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        kills += 1;
    }
    eprintln!("replay killed {kills} time(s)");
    // Finish the replay (the broker requeues what the killed runs held).
    cli_ok(&args);
    assert_eq!(settled_count(&rabbit, &dlq, 0).await, 0, "DLQ drained");
    let delivered = rabbit.message_count(&q).await.unwrap();
    eprintln!("{delivered} copies for {total} letters");
    assert!(u64::from(delivered) >= total, "{delivered} < {total}");
    assert!(
        kills == 0 || u64::from(delivered) > total,
        "no kill interrupted a redrive in flight ({kills} kills): the test proved nothing"
    );

    let state = Arc::new(Worker::default());
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .idempotency(Arc::new(store), KeySource::MessageId)
        .build(handler_fn(handler(Arc::clone(&state))));
    // Done when the queue is empty and every letter ran: an empty queue
    // alone can still have letters in the worker's prefetch.
    let ran_all = || {
        let handled = state.handled.lock().unwrap();
        handled.iter().collect::<BTreeSet<_>>().len() as u64 == total
    };
    run_until(
        rabbit.source(&q, 32).await.unwrap(),
        stack,
        Duration::from_secs(180),
        || async { ran_all() && rabbit.message_count(&q).await.unwrap() == 0 },
    )
    .await;
    let handled = state.handled.lock().unwrap().clone();
    let distinct: BTreeSet<&String> = handled.iter().collect();
    assert_eq!(distinct.len() as u64, total, "every letter ran");
    assert_eq!(
        handled.len() as u64,
        total,
        "no letter ran twice ({delivered} copies delivered after {kills} kills)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_back_once() {
    let rabbit = rabbit().await;
    let q = unique("ri");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let dlq = format!("{q}.dlq");
    for n in 0..5u64 {
        publish_copies(&rabbit, &dlq, &letter(&q, &format!("{q}-{n}"), n, 0), 1).await;
    }
    let url = amqp();
    let base = ["--amqp", url.as_str(), "--queue", q.as_str()];
    let file = std::env::temp_dir().join(format!("{q}.jsonl"));
    let path = file.to_str().unwrap();
    cli_ok(&[&["dlq", "export", "--out", path][..], &base[..]].concat());
    let before = cli_ok(&[&["dlq", "list", "--json"][..], &base[..]].concat());
    cli_ok(&[&["dlq", "purge", "--all", "--yes"][..], &base[..]].concat());
    assert_eq!(settled_count(&rabbit, &dlq, 0).await, 0);

    // A partial restore (as if the first run died), then the full rerun.
    let first_two: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    let partial = std::env::temp_dir().join(format!("{q}-partial.jsonl"));
    std::fs::write(&partial, first_two).unwrap();
    let out = cli_ok(
        &[
            &["dlq", "import", "--in", partial.to_str().unwrap()][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(out.contains("imported 2 message(s)"), "{out}");
    let out = cli_ok(&[&["dlq", "import", "--in", path][..], &base[..]].concat());
    assert!(
        out.contains("imported 3 message(s)") && out.contains("2 already in the DLQ"),
        "{out}"
    );
    assert_eq!(settled_count(&rabbit, &dlq, 5).await, 5, "no copies");
    let after = cli_ok(&[&["dlq", "list", "--json"][..], &base[..]].concat());
    assert_eq!(after, before, "the same letters, headers and payloads");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&partial);
}

/// `export` and `purge` of a DLQ much larger than the memory they may use:
/// one letter at a time (plus ids), so the peak memory over a DLQ of
/// `BACKSTOP_CLI_LARGE_LETTERS` letters of 64 KiB (default 500: 31 MiB)
/// stays within 10 MiB of the same command on an empty DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_dlqs_are_walked_in_bounded_memory() {
    let total: u64 = std::env::var("BACKSTOP_CLI_LARGE_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rabbit = rabbit().await;
    let q = unique("rl");
    let empty = unique("rle");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    rabbit.declare(&Topology::quorum(&empty)).await.unwrap();
    let dlq = format!("{q}.dlq");
    let body = "x".repeat(64 * 1024);
    let publisher = rabbit.publisher();
    for i in 0..total {
        let m = backstop::Message::new(body.clone())
            .with_message_id(format!("{q}-{i}"))
            .with_header(backstop::wire::ORIGINAL_SOURCE, q.as_str());
        publisher.publish_to_queue(&dlq, &m).await.unwrap();
    }
    let url = amqp();
    let file = std::env::temp_dir().join(format!("{q}.jsonl"));
    let path = file.to_str().unwrap();
    let export = |queue: &str| {
        peak_rss_kib(&[
            "dlq", "export", "--amqp", &url, "--queue", queue, "--out", path,
        ])
    };
    let (baseline, ok) = export(&empty);
    assert!(ok);
    let (large, ok) = export(&q);
    assert!(ok);
    let exported = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let _ = std::fs::remove_file(&file);
    assert_eq!(exported, total);
    let (purge, ok) = peak_rss_kib(&[
        "dlq", "purge", "--all", "--yes", "--amqp", &url, "--queue", &q,
    ]);
    assert!(ok);
    let payload_kib = total * 64;
    eprintln!(
        "peak RSS: export of an empty DLQ {baseline} KiB, export of {total} letters ({payload_kib} KiB of payload) {large} KiB, purge {purge} KiB"
    );
    assert!(
        large < baseline + 10 * 1024 && purge < baseline + 10 * 1024,
        "memory grows with the DLQ: {baseline} KiB empty, {large} KiB export, {purge} KiB purge of {payload_kib} KiB"
    );
    assert_eq!(settled_count(&rabbit, &dlq, 0).await, 0);
}

/// A letter that cannot be settled within the hold budget is requeued and
/// the command stops with an error saying so; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_over_the_hold_budget_is_requeued_and_the_command_stops() {
    let rabbit = rabbit().await;
    let q = unique("rh");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let dlq = format!("{q}.dlq");
    for n in 0..3u64 {
        publish_copies(&rabbit, &dlq, &letter(&q, &format!("{q}-{n}"), n, 0), 1).await;
    }
    let url = amqp();
    let out = cli(&[
        "dlq",
        "list",
        "--amqp",
        &url,
        "--queue",
        &q,
        "--hold-budget",
        "1ns",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hold budget") && err.contains("rerun"),
        "{err}"
    );
    assert_eq!(settled_count(&rabbit, &dlq, 3).await, 3);
    let listed = ids(&cli_ok(&[
        "dlq", "list", "--json", "--amqp", &url, "--queue", &q,
    ]));
    assert_eq!(listed.len(), 3);
}

/// The letters of `queue` in order, each with whether the broker marked it
/// redelivered (`x-delivery-count` above 0 on a quorum queue), read off the
/// queue.
async fn drain_in_order(rabbit: &RabbitMq, queue: &str) -> Vec<(String, bool)> {
    use backstop_rabbitmq::lapin::options::BasicGetOptions;
    use backstop_rabbitmq::lapin::types::AMQPValue;
    let channel = rabbit.channel().await.unwrap();
    let mut letters = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let properties = &got.delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let redelivered = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
            .is_some_and(|count| match count {
                AMQPValue::LongLongInt(n) => n > 0,
                AMQPValue::LongInt(n) => n > 0,
                AMQPValue::LongUInt(n) => n > 0,
                other => panic!("x-delivery-count of an unexpected type: {other:?}"),
            });
        letters.push((id, redelivered));
    }
    letters
}

/// A normal walk returns nothing to the queue: after two lists, a paced
/// dry-run replay and a purge that removes the last letter, every letter
/// left is in its original order and none was ever redelivered (a walk that
/// acked before cancelling its consumer received letters past its count and
/// returned them when it closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_keep_the_order_and_redeliver_nothing() {
    let rabbit = rabbit().await;
    let q = unique("ro");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    let dlq = format!("{q}.dlq");
    // 40 letters: more than the window of 32; n % 4 of 0 and 3 are "out
    // of stock", so the purge below removes the walk's last letter (39).
    let publisher = rabbit.publisher();
    let all: Vec<String> = (0..40u64).map(|n| format!("{q}-{n:02}")).collect();
    for (n, id) in all.iter().enumerate() {
        publisher
            .publish_to_queue(&dlq, &letter(&q, id, n as u64, 0))
            .await
            .unwrap();
    }
    let url = amqp();
    let base = ["--amqp", url.as_str(), "--queue", q.as_str()];
    for _ in 0..2 {
        assert_eq!(
            ids(&cli_ok(
                &[&["dlq", "list", "--json"][..], &base[..]].concat()
            ))
            .len(),
            40
        );
    }
    cli_ok(
        &[
            &[
                "dlq",
                "replay",
                "--dry-run",
                "--rate",
                "200",
                "--error",
                "card",
            ][..],
            &base[..],
        ]
        .concat(),
    );
    let purged = cli_ok(
        &[
            &["dlq", "purge", "--yes", "--error", "stock"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(purged.contains("purged 20"), "{purged}");
    // Acks reach a quorum queue's count asynchronously.
    assert_eq!(settled_count(&rabbit, &dlq, 20).await, 20);

    let left = drain_in_order(&rabbit, &dlq).await;
    let expected: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 4 == 1 || n % 4 == 2)
        .map(|(_, id)| id.clone())
        .collect();
    let order: Vec<String> = left.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(order, expected, "the letters left, in their original order");
    let redelivered: Vec<&String> = left.iter().filter(|(_, r)| *r).map(|(id, _)| id).collect();
    assert!(
        redelivered.is_empty(),
        "letters a walk returned to the queue: {redelivered:?}"
    );
}
