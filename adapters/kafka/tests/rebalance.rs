//! Group membership changes and per-key order under concurrency.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backstop::{Context, HandlerError, StackBuilder, handler_fn};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_and_leaving_mid_run_loses_nothing() {
    let group = unique("g");
    let kafka = kafka(&group);
    let topic = topic(&kafka, "rebalance", 4).await;
    let sent = messages("rb", 4_000, 40);
    publish_all(&kafka.publisher().unwrap(), &topic, &sent).await;
    let expected = ids(&sent);

    let handled: Shared<BTreeMap<String, BTreeSet<&'static str>>> = shared();
    let stack = |who: &'static str| {
        let handled = Arc::clone(&handled);
        StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap())).build(
            handler_fn(move |_v: serde_json::Value, ctx: Context| {
                let handled = Arc::clone(&handled);
                async move {
                    tokio::time::sleep(Duration::from_millis(8)).await;
                    handled
                        .lock()
                        .unwrap()
                        .entry(ctx.message_id().to_owned())
                        .or_default()
                        .insert(who);
                    Ok::<_, HandlerError>(())
                }
            }),
        )
    };
    let count = |who: &str| {
        handled
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.contains(who))
            .count()
    };

    let a = run(kafka.source(&[&topic], 8).unwrap(), stack("a"), 8);
    assert!(eventually(Duration::from_secs(30), || count("a") >= 300).await);
    let b = run(kafka.source(&[&topic], 8).unwrap(), stack("b"), 8);
    assert!(
        eventually(Duration::from_secs(30), || count("b") >= 300).await,
        "the second member got partitions"
    );
    let b_summary = b.stop().await;
    let all_done = eventually(Duration::from_secs(60), || {
        handled.lock().unwrap().len() >= expected.len()
    })
    .await;
    let a_summary = a.stop().await;
    let seen: BTreeSet<String> = handled.lock().unwrap().keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&seen).take(10).collect();
    assert!(
        all_done && missing.is_empty(),
        "missing: {missing:?}; a: {a_summary}, b: {b_summary}"
    );
    let after_b_left = count("a");
    assert!(after_b_left > 300, "a went on after b left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_is_kept_with_concurrency() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "keyorder", 2).await;
    let sent = messages("ko", 1_500, 12);
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    let order: Shared<BTreeMap<String, Vec<usize>>> = shared();
    let in_flight: Shared<HashSet<String>> = shared();
    let overlaps: Shared<Vec<String>> = shared();
    let max_parallel: Shared<usize> = shared();
    let (o, f, v, m) = (
        Arc::clone(&order),
        Arc::clone(&in_flight),
        Arc::clone(&overlaps),
        Arc::clone(&max_parallel),
    );
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .build(handler_fn(move |value: serde_json::Value, ctx: Context| {
            let (order, in_flight, overlaps, max_parallel) = (
                Arc::clone(&o),
                Arc::clone(&f),
                Arc::clone(&v),
                Arc::clone(&m),
            );
            async move {
                let key = String::from_utf8(ctx.message().key.clone().unwrap().to_vec()).unwrap();
                let seq = value["n"].as_u64().unwrap() as usize;
                {
                    let mut flying = in_flight.lock().unwrap();
                    if !flying.insert(key.clone()) {
                        overlaps.lock().unwrap().push(key.clone());
                    }
                    let mut max = max_parallel.lock().unwrap();
                    *max = (*max).max(flying.len());
                }
                order
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(seq);
                tokio::time::sleep(Duration::from_millis(1 + (seq % 3) as u64)).await;
                in_flight.lock().unwrap().remove(&key);
                Ok::<_, HandlerError>(())
            }
        }));
    let worker = run(kafka.source(&[&topic], 16).unwrap(), stack, 16);
    let total = sent.len();
    let done = eventually(Duration::from_secs(60), || {
        order.lock().unwrap().values().map(Vec::len).sum::<usize>() >= total
    })
    .await;
    worker.stop().await;
    assert!(done, "every message was handled");
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "a key ran twice at once"
    );
    assert!(*max_parallel.lock().unwrap() > 1, "keys ran concurrently");
    for (key, seqs) in order.lock().unwrap().iter() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "order of {key} broken: {seqs:?}"
        );
    }
}

/// Counts the assignments a member has been handed (an empty one too).
#[derive(Default)]
struct Assignments(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Assignments {}

impl rdkafka::consumer::ConsumerContext for Assignments {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

type Member = rdkafka::consumer::BaseConsumer<Assignments>;

/// A static member of `group` (instance `instance`) with the adapter's
/// consumer configuration, subscribed to `topic`.
fn static_member(group: &str, instance: &str, topic: &str) -> Member {
    use rdkafka::consumer::Consumer;
    let mut config = kafka(group).config().clone();
    config.group_instance_id = Some(instance.to_owned());
    // Longer than the test: a member that stops polling is not evicted by
    // its own client meanwhile (that would start a new rebalance and hide
    // what is tested).
    config
        .consumer_properties
        .insert("max.poll.interval.ms".into(), "120000".into());
    let member: Member = config
        .consumer_config()
        .create_with_context(Assignments::default())
        .expect("a consumer");
    member.subscribe(&[topic]).expect("subscribed");
    member
}

fn owned(member: &Member) -> usize {
    use rdkafka::consumer::Consumer;
    member.assignment().map_or(0, |a| a.count())
}

/// Polls `members` until `done` or `wait` has passed; true if `done`.
fn poll_until(members: &[&Member], wait: Duration, done: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + wait;
    while std::time::Instant::now() < end {
        for member in members {
            // A record is not wanted here, only the group's progress.
            let _ = member.poll(Duration::from_millis(50));
        }
        if done() {
            return true;
        }
    }
    false
}

/// A static member killed in the middle of a rebalance and restarted with
/// its instance id must not leave partitions without an owner. With an
/// incremental (cooperative) assignor the killed member was the one to
/// start the rebalance's second round, and its restart is handed the
/// first round's (partial) assignment without a new rebalance: the
/// partitions it was giving up stayed unowned for good.
#[test]
fn a_static_member_restarted_in_the_middle_of_a_rebalance_leaves_no_partition_unowned() {
    use rdkafka::consumer::Consumer;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let group = unique("g");
    let topic = runtime.block_on(topic(&kafka(&group), "static", 4));
    let first = static_member(&group, "a", &topic);
    assert!(
        poll_until(&[&first], Duration::from_secs(30), || owned(&first) == 4),
        "the first member owns every partition"
    );
    // A second member joins while the first stops polling: the first is
    // now as good as dead in the middle of the rebalance (it cannot give
    // up partitions or rejoin).
    let second = static_member(&group, "b", &topic);
    // Until the group's first round hands it an assignment (a cooperative
    // round does at once, an empty one); an eager round waits for the
    // first member, which never rejoins, so this waits its full time.
    poll_until(&[&second], Duration::from_secs(10), || {
        second.context().0.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    // Its restart, with the same instance id (the first is fenced).
    let restarted = static_member(&group, "a", &topic);
    let covered = poll_until(&[&restarted, &second], Duration::from_secs(40), || {
        owned(&restarted) + owned(&second) == 4
    });
    assert!(
        covered,
        "every partition has an owner: restarted member owns {}, second {} of 4",
        owned(&restarted),
        owned(&second)
    );
    drop(restarted);
    drop(second);
    // Fenced: its close waits on nothing, but a close has no time limit:
    // on a thread of its own, not joined, it cannot hang the test.
    std::thread::spawn(move || drop(first));
}
