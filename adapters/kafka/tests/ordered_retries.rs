//! Ordered retries (`KafkaConfig::ordered_retries`): while a message waits
//! in a retry tier, the later messages of its key wait behind it in the
//! parked topic and run after it ended, in order; other keys run on; the
//! main partition's offset moves past the parked ones; a new member reads
//! the parked keys before it runs a message of theirs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backstop::{Context, HandlerError, Message, RetryPolicy, StackBuilder, handler_fn};
use backstop_kafka::Kafka;
use common::*;

/// One handler run: the message's key and sequence number, and whether it
/// succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    key: String,
    seq: u64,
    ok: bool,
}

type Ledger = Shared<Vec<Run>>;

/// `keys` × `per_key` messages, published key after key per round (K0 J0
/// L0 K1 J1 L1 …), so each key's sequence is in order on its partition.
fn orders(prefix: &str, keys: &[&str], per_key: u64) -> Vec<Message> {
    let mut out = Vec::new();
    for seq in 0..per_key {
        for key in keys {
            out.push(
                Message::new(format!(r#"{{"key":"{key}","seq":{seq}}}"#))
                    .with_message_id(format!("{prefix}-{key}-{seq}"))
                    .with_key((*key).to_owned()),
            );
        }
    }
    out
}

/// A stack whose handler records each run in `ledger` and fails the runs
/// `fails` says (by key, sequence and attempt) with its error.
fn stack(
    kafka: &Kafka,
    ledger: &Ledger,
    retries: u32,
    fails: fn(&str, u64, u32) -> Option<HandlerError>,
) -> backstop::Stack {
    let ledger = Arc::clone(ledger);
    StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(retries).in_process_limit(Duration::from_millis(200)))
        .retry_sink(Arc::new(kafka.retry_sink().unwrap()))
        .build(handler_fn(move |v: serde_json::Value, ctx: Context| {
            let ledger = Arc::clone(&ledger);
            async move {
                let key = v["key"].as_str().unwrap_or_default().to_owned();
                let seq = v["seq"].as_u64().unwrap_or_default();
                let fail = fails(&key, seq, ctx.attempt());
                ledger.lock().unwrap().push(Run {
                    key,
                    seq,
                    ok: fail.is_none(),
                });
                match fail {
                    Some(error) => Err(error),
                    None => Ok(()),
                }
            }
        }))
}

/// The sequence numbers of `key`'s runs, in run order (`ok`: successful
/// runs only).
fn runs_of(ledger: &Ledger, key: &str, ok: bool) -> Vec<u64> {
    ledger
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.key == key && (r.ok || !ok))
        .map(|r| r.seq)
        .collect()
}

fn ordered(group: &str, instance: &str) -> Kafka {
    kafka(group).exactly_once(instance).ordered_retries()
}

#[test]
fn ordered_retries_need_exactly_once() {
    let kafka = kafka("no-eo").ordered_retries();
    let refused = kafka.source(&["t"], 4).expect_err("refused");
    assert!(refused.to_string().contains("exactly-once"), "{refused}");
}

/// A transient failure retried through a tier (`retry_after` past the
/// in-process limit).
fn later(after: Duration) -> Option<HandlerError> {
    Some(HandlerError::transient("not yet").retry_after(after))
}

/// K@0 fails into the tiers until the test lets it succeed.
static HOLD_K: AtomicBool = AtomicBool::new(true);

/// K@0 fails into the 2 s tier until the test has looked; L@0 fails
/// twice into the 2 s tier, then for good (dead-lettered from the tier); J
/// never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_holds_back_its_key_only_and_its_followers_run_after_it_in_order() {
    let group = unique("ord");
    let kafka = ordered(&group, "w1");
    let topic = topic(&kafka, "ord", 1).await;
    let sent = orders(&topic, &["K", "J", "L"], 5);
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;
    let ledger: Ledger = shared();
    fn fails(key: &str, seq: u64, attempt: u32) -> Option<HandlerError> {
        match (key, seq) {
            ("K", 0) if HOLD_K.load(Ordering::SeqCst) => later(Duration::from_secs(1)),
            ("L", 0) if attempt < 3 => later(Duration::from_secs(1)),
            ("L", 0) => Some(HandlerError::permanent("never")),
            _ => None,
        }
    }
    let started = Instant::now();
    let worker = run(
        kafka.source(&[&topic], 8).unwrap(),
        stack(&kafka, &ledger, 20, fails),
        8,
    );
    // The main offset moves past every message, the parked ones included,
    // while K@0 still waits in its tier.
    let end = end_offsets(&kafka, &topic).await;
    let committed = committed_eventually(&kafka, &topic, &end, Duration::from_secs(20)).await;
    assert_eq!(end.len(), 1);
    let k_before = runs_of(&ledger, "K", true);
    let j_done = runs_of(&ledger, "J", true);
    assert_eq!(
        committed.get(&0).copied().flatten(),
        end.get(&0).copied(),
        "the main partition is committed to its end"
    );
    assert!(
        k_before.is_empty(),
        "no K ran before its head's retry: {k_before:?} (after {:?})",
        started.elapsed()
    );
    assert_eq!(j_done, [0, 1, 2, 3, 4], "J never waited for K or L");
    HOLD_K.store(false, Ordering::SeqCst);

    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 1, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(30), || {
            runs_of(&ledger, "K", true).len() == 5 && runs_of(&ledger, "L", true).len() == 4
        })
        .await,
        "K and L finished: {:?}",
        ledger.lock().unwrap()
    );
    let summary = worker.stop().await;

    let k_runs = runs_of(&ledger, "K", false);
    let k0_runs = k_runs.iter().take_while(|s| **s == 0).count();
    assert!(
        k0_runs >= 2,
        "K@0 failed, then ran again: {k_runs:?} {summary}"
    );
    assert_eq!(
        k_runs[k0_runs..],
        [1, 2, 3, 4],
        "then the rest of K, in order"
    );
    assert_eq!(runs_of(&ledger, "K", true), [0, 1, 2, 3, 4]);
    // L@0 ran three times (once here, twice in the tier), then its letter.
    assert_eq!(runs_of(&ledger, "L", false), [0, 0, 0, 1, 2, 3, 4]);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].meta.message_id, format!("{topic}-L-0"));
}

/// The head is still in its tier when the member stops: the next member
/// (a new instance) reads the parked keys first, so a message of K
/// published after the restart waits behind the parked ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_reads_the_parked_keys_before_it_runs_one_of_them() {
    let group = unique("ordr");
    let kafka = ordered(&group, "w1");
    let topic = topic(&kafka, "ordr", 2).await;
    let sent = orders(&topic, &["K", "J"], 4);
    let publisher = kafka.publisher().unwrap();
    publish_in_order(&publisher, &topic, &sent).await;
    let ledger: Ledger = shared();
    // Under the first member K@0 fails on every attempt (it stays in the
    // tiers); under the second it succeeds.
    fn always(key: &str, seq: u64, _attempt: u32) -> Option<HandlerError> {
        if key == "K" && seq == 0 {
            later(Duration::from_secs(1))
        } else {
            None
        }
    }
    fn never(_key: &str, _seq: u64, _attempt: u32) -> Option<HandlerError> {
        None
    }
    let first = run(
        kafka.source(&[&topic], 8).unwrap(),
        stack(&kafka, &ledger, 8, always),
        8,
    );
    let end = end_offsets(&kafka, &topic).await;
    committed_eventually(&kafka, &topic, &end, Duration::from_secs(20)).await;
    first.stop().await;
    assert!(
        runs_of(&ledger, "K", true).is_empty(),
        "K@0 is in a tier when the first member stops: {:?}",
        ledger.lock().unwrap()
    );

    let second = ordered(&group, "w2");
    let worker = run(
        second.source(&[&topic], 8).unwrap(),
        stack(&second, &ledger, 8, never),
        8,
    );
    let later = orders(&format!("{topic}-later"), &["K"], 1);
    let mut k4 = later[0].clone();
    k4.payload = r#"{"key":"K","seq":4}"#.into();
    publish_in_order(&publisher, &topic, &[k4]).await;
    assert!(
        eventually(Duration::from_secs(40), || runs_of(&ledger, "K", true)
            .len()
            == 5)
        .await,
        "every K ran: {:?}",
        ledger.lock().unwrap()
    );
    let summary = worker.stop().await;
    assert_eq!(
        runs_of(&ledger, "K", true),
        [0, 1, 2, 3, 4],
        "in order, across the restart: {summary}"
    );
    assert_eq!(runs_of(&ledger, "J", true), [0, 1, 2, 3]);
}

/// The end offset of each partition of `topic` that holds records (an
/// empty partition never gets a committed offset).
async fn end_offsets(kafka: &Kafka, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let mut end = kafka.topics().unwrap().end_offsets(topic).await.unwrap();
    end.retain(|_, o| *o > 0);
    end
}

/// A main topic grown without `ensure_topics` has partitions its parked
/// topic lacks: the worker refuses to start, saying how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_topic_with_fewer_partitions_than_its_topic_stops_the_worker_at_start() {
    let group = unique("ordp");
    let plain = kafka(&group);
    let topic = topic(&plain, "ordp", 2).await;
    let parked = backstop_kafka::parked_topic(&topic, &group);
    plain
        .topics()
        .unwrap()
        .create(&[backstop_kafka::TopicSpec::new(parked.clone()).partitions(1)])
        .await
        .unwrap();
    let kafka = ordered(&group, "w1");
    let ledger: Ledger = shared();
    fn never(_key: &str, _seq: u64, _attempt: u32) -> Option<HandlerError> {
        None
    }
    let run = backstop::Runner::new(
        kafka.source(&[&topic], 4).unwrap(),
        stack(&kafka, &ledger, 1, never),
    )
    .run();
    let refused = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("stopped at start")
        .expect_err("refused");
    let text = refused.to_string();
    assert!(
        text.contains(&parked) && text.contains("ensure_topics"),
        "{text}"
    );
}

/// Every transaction that holds the poison message's letter aborts while
/// the DLQ is missing: each abort rewinds the partition (K@0's deferral and
/// the copies of K@1 and K@2 are undone) and loads its parked keys again,
/// so K@0 runs again and again and K@1 and K@2 never run. Once the DLQ
/// exists, the next transaction commits and K runs in order through its
/// retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_reload_the_parked_keys_and_keep_the_order() {
    let group = unique("orda");
    let kafka = ordered(&group, "w1");
    let topic = topic(&kafka, "orda", 1).await;
    let dlq = kafka.dlq_topic(&topic);
    let admin = kafka.topics().unwrap();
    admin.delete(&[&dlq]).await.unwrap();
    let keyed = |key: &str, seq: u64| {
        Message::new(format!(r#"{{"key":"{key}","seq":{seq}}}"#))
            .with_message_id(format!("{topic}-{key}-{seq}"))
            .with_key(key.to_owned())
    };
    let poison = Message::new("not json").with_message_id(format!("{topic}-poison"));
    let sent = [
        keyed("K", 0),
        poison,
        keyed("K", 1),
        keyed("J", 0),
        keyed("K", 2),
    ];
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;
    let ledger: Ledger = shared();
    fn fails(key: &str, seq: u64, attempt: u32) -> Option<HandlerError> {
        if key == "K" && seq == 0 && attempt == 1 {
            later(Duration::from_secs(1))
        } else {
            None
        }
    }
    let worker = run(
        kafka.source(&[&topic], 8).unwrap().skip_destination_check(),
        stack(&kafka, &ledger, 5, fails),
        8,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = ledger.lock().unwrap().clone();
    admin
        .create(&[backstop_kafka::TopicSpec::new(dlq.clone())])
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(40), || {
        runs_of(&ledger, "K", true).len() == 3
    })
    .await;
    let letters = read_topic(&kafka, &dlq, 1, Duration::from_secs(20)).await;
    let summary = worker.stop().await;
    let k_before: Vec<u64> = before
        .iter()
        .filter(|r| r.key == "K")
        .map(|r| r.seq)
        .collect();
    assert!(
        k_before.len() >= 2 && k_before.iter().all(|s| *s == 0),
        "K@0 ran again after each abort, nothing of K behind it: {before:?}"
    );
    assert!(done, "{:?} {summary}", ledger.lock().unwrap());
    let k_runs = runs_of(&ledger, "K", false);
    let k0_runs = k_runs.iter().take_while(|s| **s == 0).count();
    assert_eq!(
        k_runs[k0_runs..],
        [1, 2],
        "then K@1 and K@2 once each: {k_runs:?}"
    );
    assert_eq!(runs_of(&ledger, "K", true), [0, 1, 2]);
    assert!(runs_of(&ledger, "J", true).iter().all(|s| *s == 0));
    assert_eq!(letters.len(), 1, "the poison letter once: {letters:?}");
}
