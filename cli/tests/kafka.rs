//! `backstop dlq` on a Kafka DLQ topic against the real broker.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop::idempotency::KeySource;
use backstop::idempotency::MemoryStore;
use backstop::publish::Publisher;
use backstop::{StackBuilder, handler_fn};
use backstop_kafka::{Kafka, RetryTiers, TopicSpec};
use common::*;

fn kafka(group: &str) -> Kafka {
    Kafka::new(brokers(), group)
        .retry_tiers(RetryTiers::new([
            Duration::from_secs(1),
            Duration::from_secs(10),
        ]))
        .configure(|c| c.session_timeout = Duration::from_secs(6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_filtered_replay_goes_to_the_groups_retry_path() {
    let topic = unique("kt");
    let group = unique("kg");
    let k = kafka(&group);
    k.ensure_topics([TopicSpec::new(&topic).partitions(2)])
        .await
        .unwrap();
    let publisher = k.publisher().unwrap();
    for n in 0..100u64 {
        let m = backstop::Message::new(payload(n))
            .with_message_id(format!("{topic}-{n}"))
            .with_key(format!("k{n}"));
        publisher.publish(&topic, &m).await.unwrap();
    }
    let store = Arc::new(MemoryStore::new(10_000, Duration::from_secs(600)));
    let state = Arc::new(Worker::default());
    state.fail.store(true, Ordering::SeqCst);
    let stack = || {
        StackBuilder::<serde_json::Value>::new(Arc::new(k.dead_letter_sink().unwrap()))
            .idempotency(store.clone(), KeySource::MessageId)
            .build(handler_fn(handler(Arc::clone(&state))))
    };
    run_until(
        k.source(&[&topic], 16).unwrap(),
        stack(),
        Duration::from_secs(60),
        || async { dlq_len(&k, &topic).await >= 100 },
    )
    .await;
    assert_eq!(dlq_len(&k, &topic).await, 100);

    let b = brokers();
    let base = [
        "--kafka",
        b.as_str(),
        "--topic",
        topic.as_str(),
        "--group",
        group.as_str(),
    ];
    let list = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "--json"];
        args.extend(base);
        args.extend(extra);
        ids(&cli_ok(&args))
    };
    let expect = |r: u64| -> BTreeSet<String> {
        (0..100)
            .filter(|n| n % 4 == r)
            .map(|n| format!("{topic}-{n}"))
            .collect()
    };
    assert_eq!(list(&[]).len(), 100);
    assert_eq!(list(&["--error", "card declined"]), expect(1));
    assert_eq!(list(&["--kind", "decode"]), expect(0));
    assert_eq!(
        list(&["--key", "k2"]),
        BTreeSet::from([format!("{topic}-2")])
    );

    let out = cli_ok(
        &[
            &["dlq", "replay", "--error", "card declined"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(out.contains("replayed 25 message(s)"), "{out}");
    // A rerun skips what the state topic records.
    let again = cli_ok(
        &[
            &["dlq", "replay", "--error", "card declined"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(again.contains("replayed 0 message(s)"), "{again}");
    assert_eq!(list(&[]).len(), 75);
    assert_eq!(list(&["--all"]).len(), 100);

    state.fail.store(false, Ordering::SeqCst);
    run_until(
        k.source(&[&topic], 16).unwrap(),
        stack(),
        Duration::from_secs(60),
        || async { state.handled.lock().unwrap().len() >= 25 },
    )
    .await;
    let handled: BTreeSet<String> = state.handled.lock().unwrap().iter().cloned().collect();
    assert_eq!(handled, expect(1), "exactly the redriven letters ran again");

    let purged = cli_ok(
        &[
            &["dlq", "purge", "--yes", "--kind", "decode"][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(purged.contains("purged 25"), "{purged}");
    assert_eq!(list(&[]), &expect(2) | &expect(3));
    k.topics().unwrap().delete(&[&topic]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_interrupted_replay_resumes_and_the_loop_guard_holds() {
    let topic = unique("ki");
    let group = unique("kh");
    let target = unique("kx");
    let k = kafka(&group);
    k.ensure_topics([TopicSpec::new(&topic)]).await.unwrap();
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&target)])
        .await
        .unwrap();
    let dlq = k.dlq_topic(&topic);
    let publisher = k.publisher().unwrap();
    for n in 0..30u64 {
        publisher
            .publish(&dlq, &letter(&topic, &format!("{topic}-{n}"), n, 0))
            .await
            .unwrap();
    }
    publisher
        .publish(&dlq, &letter(&topic, "looping", 1, 3))
        .await
        .unwrap();
    let b = brokers();
    let args = [
        "dlq",
        "replay",
        "--kafka",
        b.as_str(),
        "--dlq",
        dlq.as_str(),
        "--to",
        target.as_str(),
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .args(["--rate", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill on observed progress, not after a fixed time: the first redrive
    // waits for the binary's start, the metadata and the state topic. Two
    // copies in the target mean the first letter's state record is written
    // (a letter's record is confirmed before the next redrive is published);
    // at 10/s the other 29 still take about 3 s.
    let topics = k.topics().unwrap();
    kill_after_two_moved(&mut child, || async {
        topics
            .end_offsets(&target)
            .await
            .unwrap()
            .values()
            .sum::<i64>()
    })
    .await;
    let left = ids(&cli_ok(&[
        "dlq", "list", "--json", "--kafka", &b, "--dlq", &dlq,
    ]));
    assert!(
        left.len() > 1 && left.len() < 31,
        "cut halfway: {} left",
        left.len()
    );

    let out = cli_ok(&args);
    assert!(out.contains("refused looping"), "{out}");
    let left = ids(&cli_ok(&[
        "dlq", "list", "--json", "--kafka", &b, "--dlq", &dlq,
    ]));
    assert_eq!(left, BTreeSet::from(["looping".to_owned()]));
    let moved = ids(&cli_ok(&[
        "dlq", "list", "--json", "--kafka", &b, "--dlq", &target,
    ]));
    let all: BTreeSet<String> = (0..30).map(|n| format!("{topic}-{n}")).collect();
    assert_eq!(moved, all);
    k.topics()
        .unwrap()
        .delete(&[&topic, &target])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_copies_of_one_letter_are_one_letter() {
    let topic = unique("kc");
    let group = unique("kcg");
    let target = unique("kct");
    let k = kafka(&group);
    k.ensure_topics([TopicSpec::new(&topic)]).await.unwrap();
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&target)])
        .await
        .unwrap();
    let dlq = k.dlq_topic(&topic);
    let publisher = k.publisher().unwrap();
    for (id, n, copies) in [("twice", 1, 2), ("once", 2, 1), ("thrice", 3, 3)] {
        for _ in 0..copies {
            publisher
                .publish(&dlq, &letter(&topic, id, n, 0))
                .await
                .unwrap();
        }
    }
    let b = brokers();
    let base = ["--kafka", b.as_str(), "--dlq", dlq.as_str()];
    let json = cli_ok(&[&["dlq", "list", "--json"][..], &base[..]].concat());
    assert_eq!(json.lines().count(), 3, "{json}");
    let table = cli_ok(&[&["dlq", "list"][..], &base[..]].concat());
    assert!(
        table.contains("thrice (3 copies)") && table.contains("3 message(s)"),
        "{table}"
    );
    assert!(
        json.lines()
            .any(|l| l.contains("\"message_id\":\"twice\"") && l.contains("\"copies\":2")),
        "{json}"
    );
    let out = cli_ok(
        &[
            &["dlq", "replay", "--id", "twice", "--to", target.as_str()][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    let moved = cli_ok(&["dlq", "list", "--json", "--kafka", &b, "--dlq", &target]);
    assert_eq!(moved.lines().count(), 1, "one redrive: {moved}");
    let out = cli_ok(&[&["dlq", "purge", "--yes", "--id", "thrice"][..], &base[..]].concat());
    assert!(
        out.contains("purged 1 message(s)") && out.contains("2 extra copy(ies)"),
        "{out}"
    );
    assert_eq!(
        ids(&cli_ok(
            &[&["dlq", "list", "--json"][..], &base[..]].concat()
        )),
        BTreeSet::from(["once".to_owned()])
    );
    let all = cli_ok(&[&["dlq", "list", "--json", "--all"][..], &base[..]].concat());
    assert!(
        all.lines().any(|l| l.contains("\"message_id\":\"thrice\"")
            && l.contains("\"state\":\"purged\"")
            && l.contains("\"copies\":3")),
        "all three copies purged as one letter: {all}"
    );
    k.topics()
        .unwrap()
        .delete(&[&topic, &target])
        .await
        .unwrap();
}

/// `export` of a Kafka DLQ much larger than the memory it may use: the
/// letters are streamed (an index of keys, then one letter at a time), so
/// the peak memory over `BACKSTOP_CLI_LARGE_LETTERS` letters of 64 KiB
/// (default 500: 31 MiB) stays within 20 MiB of an export of an empty DLQ
/// (librdkafka's prefetch is bounded to 8 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_large_dlqs_are_read_in_bounded_memory() {
    let total: u64 = std::env::var("BACKSTOP_CLI_LARGE_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let topic = unique("kl");
    let group = unique("klg");
    let k = kafka(&group);
    k.ensure_topics([TopicSpec::new(&topic)]).await.unwrap();
    let empty = unique("kle");
    k.topics()
        .unwrap()
        .create(&[TopicSpec::new(&empty)])
        .await
        .unwrap();
    let dlq = k.dlq_topic(&topic);
    let publisher = k.publisher().unwrap();
    let body = "x".repeat(64 * 1024);
    let sends = (0..total).map(|i| {
        let m = backstop::Message::new(body.clone())
            .with_message_id(format!("{topic}-{i}"))
            .with_header(backstop::wire::ORIGINAL_SOURCE, topic.as_str());
        let (publisher, dlq) = (publisher.clone(), dlq.clone());
        async move { publisher.publish(&dlq, &m).await }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    let b = brokers();
    let file = std::env::temp_dir().join(format!("{topic}.jsonl"));
    let path = file.to_str().unwrap();
    let export =
        |name: &str| peak_rss_kib(&["dlq", "export", "--kafka", &b, "--dlq", name, "--out", path]);
    let (baseline, ok) = export(&empty);
    assert!(ok);
    let (large, ok) = export(&dlq);
    assert!(ok);
    let exported = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let _ = std::fs::remove_file(&file);
    assert_eq!(exported, total);
    let payload_kib = total * 64;
    eprintln!(
        "peak RSS: export of an empty Kafka DLQ {baseline} KiB, of {total} letters ({payload_kib} KiB of payload) {large} KiB"
    );
    assert!(
        large < baseline + 20 * 1024,
        "memory grows with the DLQ: {baseline} KiB empty, {large} KiB for {payload_kib} KiB"
    );
    k.topics()
        .unwrap()
        .delete(&[&topic, &empty, &dlq])
        .await
        .unwrap();
}
