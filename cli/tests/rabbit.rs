//! `backstop dlq` against the real RabbitMQ.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop::idempotency::KeySource;
use backstop::{MemoryStore, StackBuilder, handler_fn};
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
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
