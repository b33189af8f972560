//! Exactly-once mode: dead letters and handler outputs are committed in one
//! transaction with the offsets they follow from, and the idempotency marks
//! are written only after that commit.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::Store;
use backstop::idempotency::{Claim, Key, Keyspace, MemoryStore};
use backstop::{Context, HandlerError, KeySource, Message, RetryPolicy, StackBuilder, handler_fn};
use backstop_kafka::{Kafka, TopicSpec};
use common::*;

/// Messages `0..n` (ids `<prefix>-<i>`); every fifth fails for good.
fn poison(n: u64) -> bool {
    n.is_multiple_of(5)
}

fn batch(prefix: &str, n: usize) -> Vec<Message> {
    messages(prefix, n, n)
}

/// A stack that publishes `out-<n>` to `outputs` for each good message and
/// fails the poison ones for good; counts each message's runs.
fn stack(
    kafka: &Kafka,
    store: &Arc<MemoryStore>,
    outputs: &str,
    runs: &Shared<BTreeMap<u64, usize>>,
) -> backstop::Stack {
    let (outputs, runs) = (outputs.to_owned(), Arc::clone(runs));
    StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(1))
        .nack_delay(Duration::from_millis(100))
        .idempotency(Arc::clone(store) as Arc<dyn Store>, KeySource::MessageId)
        .around_attempt(kafka.publish_layer().unwrap())
        .build(handler_fn(move |v: serde_json::Value, ctx: Context| {
            let (outputs, runs) = (outputs.clone(), Arc::clone(&runs));
            async move {
                let n = v["n"].as_u64().unwrap();
                *runs.lock().unwrap().entry(n).or_insert(0) += 1;
                if poison(n) {
                    return Err(HandlerError::permanent(format!("order {n} is invalid")));
                }
                ctx.publish(&outputs, Message::new(format!("out-{n}")))
                    .await?;
                Ok(())
            }
        }))
}

/// How a message's key stands in the store (claimed and released again when
/// it is free, so the worker must be stopped).
async fn state(store: &MemoryStore, topic: &str, group: &str, id: &str) -> &'static str {
    let key = Keyspace::new(topic, Some(group), None).key(&Key::new(id));
    match store
        .claim(&key, "inspector", Duration::from_secs(5), 0)
        .await
        .unwrap()
    {
        Claim::Completed => "completed",
        Claim::DeadLettered => "dead_lettered",
        Claim::Acquired { fence, .. } | Claim::LetterPending { fence, .. } => {
            store.release(&key, fence, None).await.unwrap();
            "free"
        }
        Claim::Busy { .. } => "busy",
    }
}

fn bodies(read: &[Message]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in read {
        *counts
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_outputs_and_offsets_commit_together_and_marks_follow() {
    let group = unique("eo");
    let kafka = kafka(&group).exactly_once("w1");
    let topic = topic(&kafka, "eo", 2).await;
    let outputs = format!("{topic}.out");
    kafka
        .topics()
        .unwrap()
        .create(&[TopicSpec::new(outputs.clone())])
        .await
        .unwrap();
    let n = 40;
    let sent = batch(&topic, n);
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;
    let store = Arc::new(MemoryStore::new(10_000, Duration::from_secs(600)));
    let runs = shared();
    let worker = run(
        kafka.source(&[&topic], 8).unwrap(),
        stack(&kafka, &store, &outputs, &runs),
        8,
    );
    let dead = (0..n as u64).filter(|i| poison(*i)).count();
    let letters = everything(&kafka, &kafka.dlq_topic(&topic), dead).await;
    let published = everything(&kafka, &outputs, n - dead).await;
    let committed = committed_eventually(
        &kafka,
        &topic,
        &end_offsets(&kafka, &topic).await,
        Duration::from_secs(20),
    )
    .await;
    let summary = worker.stop().await;

    // Every letter and every output once, as a read_committed reader sees them.
    assert_eq!(
        letters.len(),
        dead,
        "one letter per poison message: {letters:?}"
    );
    let outs = bodies(&published);
    assert_eq!(outs.len(), n - dead, "{outs:?}");
    assert!(outs.values().all(|c| *c == 1), "each output once: {outs:?}");
    for m in &published {
        assert!(
            m.meta.message_id.contains(":out:0"),
            "output ids are derived from the input: {}",
            m.meta.message_id
        );
    }
    // The offsets went with the transactions: everything is committed.
    let ends = end_offsets(&kafka, &topic).await;
    for (partition, end) in &ends {
        assert_eq!(committed.get(partition).copied().flatten(), Some(*end));
    }
    // Marks were written after the commits: every key settled.
    for i in 0..n as u64 {
        let expected = if poison(i) {
            "dead_lettered"
        } else {
            "completed"
        };
        let id = format!("{topic}-{i}");
        assert_eq!(state(&store, &topic, &group, &id).await, expected, "{id}");
    }
    assert!(runs.lock().unwrap().values().all(|r| *r == 1), "{runs:?}");
    assert_eq!(
        summary.handled + summary.dead_lettered,
        n as u64,
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_marks_nothing_and_its_letter_is_written_on_redelivery() {
    let Aborting {
        kafka,
        group,
        topic,
        outputs,
        store,
        runs,
        worker,
        rerun,
    } = aborting("eo-abort", 1, 6).await;
    let n = 6;
    worker.stop().await;
    assert!(
        rerun,
        "the poison message ran again after the abort: {runs:?}"
    );
    // Nothing of the aborted transactions is marked or visible.
    assert_eq!(
        state(&store, &topic, &group, &format!("{topic}-0")).await,
        "free"
    );
    assert_eq!(
        state(&store, &topic, &group, &format!("{topic}-1")).await,
        "free"
    );
    let before = end_offsets(&kafka, &outputs).await;
    let visible = read_topic(&kafka, &outputs, 1, Duration::from_secs(3)).await;
    assert!(
        visible.is_empty(),
        "aborted outputs are invisible: {visible:?} (log ends {before:?})"
    );
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert!(
        committed.values().all(Option::is_none),
        "no offset committed: {committed:?}"
    );

    // The DLQ exists now: the redelivery writes the letter, once.
    kafka
        .topics()
        .unwrap()
        .create(&[TopicSpec::new(kafka.dlq_topic(&topic))])
        .await
        .unwrap();
    let restarted = run(
        kafka.plain_source(&[&topic], 8).unwrap(),
        stack(&kafka, &store, &outputs, &runs),
        8,
    );
    let letters = everything(&kafka, &kafka.dlq_topic(&topic), 2).await;
    let published = everything(&kafka, &outputs, n - 2).await;
    let committed = committed_eventually(
        &kafka,
        &topic,
        &BTreeMap::from([(0, n as i64)]),
        Duration::from_secs(20),
    )
    .await;
    restarted.stop().await;
    let letter_bodies = bodies(&letters);
    assert_eq!(
        letters.len(),
        2,
        "one letter each for 0 and 5: {letter_bodies:?}"
    );
    let outs = bodies(&published);
    assert_eq!(outs.len(), n - 2, "{outs:?}");
    assert!(outs.values().all(|c| *c == 1), "each output once: {outs:?}");
    assert_eq!(committed.get(&0).copied().flatten(), Some(n as i64));
    assert_eq!(
        state(&store, &topic, &group, &format!("{topic}-0")).await,
        "dead_lettered"
    );
    assert_eq!(
        state(&store, &topic, &group, &format!("{topic}-1")).await,
        "completed"
    );
}

/// A worker on a topic of `partitions` with `n` messages whose DLQ is
/// missing (the letter's record is refused: unknown topic), so every
/// transaction holding a letter aborts; `rerun` once the poison message 0
/// ran again after an abort (within a minute).
struct Aborting {
    kafka: Kafka,
    group: String,
    topic: String,
    outputs: String,
    store: Arc<MemoryStore>,
    runs: Shared<BTreeMap<u64, usize>>,
    worker: Worker,
    rerun: bool,
}

async fn aborting(prefix: &str, partitions: i32, n: usize) -> Aborting {
    let group = unique(prefix);
    let kafka = kafka(&group).exactly_once("w1");
    let topic = unique(prefix);
    let outputs = format!("{topic}.out");
    kafka
        .topics()
        .unwrap()
        .create(&[
            TopicSpec::new(topic.clone()).partitions(partitions),
            TopicSpec::new(outputs.clone()),
        ])
        .await
        .unwrap();
    publish_in_order(&kafka.publisher().unwrap(), &topic, &batch(&topic, n)).await;
    let store = Arc::new(MemoryStore::new(10_000, Duration::from_secs(600)));
    let runs: Shared<BTreeMap<u64, usize>> = shared();
    let worker = run(
        kafka.plain_source(&[&topic], 8).unwrap(),
        stack(&kafka, &store, &outputs, &runs),
        8,
    );
    let rerun = eventually(Duration::from_secs(60), || {
        runs.lock().unwrap().get(&0).copied().unwrap_or(0) >= 2
    })
    .await;
    Aborting {
        kafka,
        group,
        topic,
        outputs,
        store,
        runs,
        worker,
        rerun,
    }
}

/// Every record of `topic` once `n` distinct ones are there (waiting up to
/// a minute), copies included: read again from the start for 3 s more.
async fn everything(kafka: &Kafka, topic: &str, n: usize) -> Vec<Message> {
    let first = read_topic(kafka, topic, n, Duration::from_secs(60)).await;
    if first.len() < n {
        return first;
    }
    let again = read_topic(kafka, topic, n + 1, Duration::from_secs(3)).await;
    // A slow second reader may see less; never fewer than the first read.
    if again.len() >= first.len() {
        again
    } else {
        first
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_aborts_the_same_worker_commits_everything_once_the_cause_is_gone() {
    let Aborting {
        kafka,
        group,
        topic,
        outputs,
        store,
        runs,
        worker,
        rerun,
    } = aborting("eo-same", 2, 12).await;
    let n = 12;
    assert!(rerun, "the poison message ran again after aborts: {runs:?}");
    let admin = kafka.topics().unwrap();
    // The cause goes away while the worker runs: its next transaction
    // commits, with the rewound partitions' work done again.
    admin
        .create(&[TopicSpec::new(kafka.dlq_topic(&topic))])
        .await
        .unwrap();
    let dead = (0..n as u64).filter(|i| poison(*i)).count();
    let letters = everything(&kafka, &kafka.dlq_topic(&topic), dead).await;
    let published = everything(&kafka, &outputs, n - dead).await;
    let committed = committed_eventually(
        &kafka,
        &topic,
        &end_offsets(&kafka, &topic).await,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;
    let letter_bodies = bodies(&letters);
    assert_eq!(letters.len(), dead, "each letter once: {letter_bodies:?}");
    let outs = bodies(&published);
    assert_eq!(outs.len(), n - dead, "{outs:?}");
    assert!(outs.values().all(|c| *c == 1), "each output once: {outs:?}");
    for (partition, end) in end_offsets(&kafka, &topic).await {
        assert_eq!(committed.get(&partition).copied().flatten(), Some(end));
    }
    for i in 0..n as u64 {
        let expected = if poison(i) {
            "dead_lettered"
        } else {
            "completed"
        };
        let id = format!("{topic}-{i}");
        assert_eq!(state(&store, &topic, &group, &id).await, expected, "{id}");
    }
}

/// The end offset of each partition of `topic`.
async fn end_offsets(kafka: &Kafka, topic: &str) -> BTreeMap<i32, i64> {
    kafka.topics().unwrap().end_offsets(topic).await.unwrap()
}
