//! `backstop replay` against the real Kafka, with a worker whose idempotency
//! store is namespaced by the replay epoch (`Namespaced` + `epoch::current`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use backstop::idempotency::{KeySource, Namespaced};
use backstop::idempotency::{MemoryStore, Store};
use backstop::publish::Publisher;
use backstop::runner::RunError;
use backstop::{CancellationToken, Runner, StackBuilder, Summary, handler_fn};
use backstop_kafka::epoch;
use backstop_kafka::rdkafka::ClientConfig;
use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use backstop_kafka::{Kafka, RetryTiers, TopicSpec};
use common::*;

const MESSAGES: usize = 20;

fn kafka(group: &str) -> Kafka {
    Kafka::new(brokers(), group)
        .retry_tiers(RetryTiers::new([
            Duration::from_secs(1),
            Duration::from_secs(10),
        ]))
        .configure(|c| c.session_timeout = Duration::from_secs(6))
}

/// A running worker: its shutdown token, its task and the namespace it uses.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<Summary, RunError>>,
    namespace: String,
}

/// Starts a worker on `topic` the way a real one starts: read the replay
/// epoch, key the shared store by it, run.
async fn start(k: &Kafka, topic: &str, store: &Arc<MemoryStore>, state: &Arc<Worker>) -> Running {
    let epoch = epoch::current(k.config(), topic)
        .await
        .expect("read the epoch");
    let namespace = format!("epoch-{epoch}");
    let idempotency: Arc<dyn Store> = Arc::new(Namespaced::new(Arc::clone(store), &namespace));
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(k.dead_letter_sink().unwrap()))
        .idempotency(idempotency, KeySource::MessageId)
        .build(handler_fn(handler(Arc::clone(state))));
    let runner = Runner::new(k.source(&[topic], 8).unwrap(), stack)
        .concurrency(8)
        .shutdown_deadline(Duration::from_secs(5));
    let token = runner.shutdown_token();
    Running {
        token,
        task: tokio::spawn(runner.run()),
        namespace,
    }
}

impl Running {
    /// Shuts the worker down (it commits and leaves the group); its summary.
    async fn stop(self) -> Summary {
        self.token.cancel();
        self.task.await.expect("worker task").expect("worker run")
    }
}

/// Polls `done` every 200 ms for at most `limit`; whether it came true.
async fn wait_for<F, Fut>(limit: Duration, done: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + limit;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The committed offsets of the group on `topic`, by partition (-1: none).
async fn committed(k: &Kafka, topic: &str) -> BTreeMap<i32, i64> {
    k.committed_offsets(topic)
        .await
        .expect("committed offsets")
        .into_iter()
        .map(|(p, o)| (p, o.unwrap_or(-1)))
        .collect()
}

async fn committed_total(k: &Kafka, topic: &str) -> i64 {
    committed(k, topic).await.values().map(|o| o.max(&0)).sum()
}

/// How many members the group has now (what the CLI checks).
async fn members(group: &str) -> usize {
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .create()
            .expect("admin consumer");
        consumer
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .expect("describe group")
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .map(|g| g.members().len())
            .sum()
    })
    .await
    .expect("describe task")
}

async fn wait_group_empty(group: &str) {
    let empty = wait_for(Duration::from_secs(30), || async {
        members(group).await == 0
    })
    .await;
    assert!(empty, "group {group} still has members");
}

/// Handler runs per message id.
fn runs_per_id(state: &Worker) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for id in state.handled.lock().unwrap().iter() {
        *runs.entry(id.clone()).or_default() += 1;
    }
    runs
}

async fn backstop(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .expect("cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_skips_done_work_reprocess_runs_it_again_and_a_live_group_is_refused() {
    let started = Instant::now();
    let topic = unique("rt");
    let group = unique("rg");
    let k = kafka(&group);
    k.ensure_topics([TopicSpec::new(&topic).partitions(2)])
        .await
        .unwrap();
    // Record timestamps are taken from this clock too; a margin for rounding.
    let before = backstop::wire::format_time(SystemTime::now() - Duration::from_secs(2));
    let publisher = k.publisher().unwrap();
    for n in 0..MESSAGES {
        let m = backstop::Message::new(format!("{{\"n\":{n}}}"))
            .with_message_id(format!("{topic}-{n}"))
            .with_key(format!("k{n}"));
        publisher.publish(&topic, &m).await.unwrap();
    }
    let ends = k.topics().unwrap().end_offsets(&topic).await.unwrap();
    assert_eq!(ends.values().sum::<i64>(), MESSAGES as i64);

    let store = Arc::new(MemoryStore::new(10_000, Duration::from_secs(600)));
    let state = Arc::new(Worker::default());
    let all_ids: Vec<String> = (0..MESSAGES).map(|n| format!("{topic}-{n}")).collect();
    let each = |times: usize| -> BTreeMap<String, usize> {
        all_ids.iter().map(|id| (id.clone(), times)).collect()
    };

    // 1. The worker handles everything once (epoch 0).
    let worker = start(&k, &topic, &store, &state).await;
    assert_eq!(worker.namespace, "epoch-0");
    let ran = wait_for(Duration::from_secs(30), || async {
        state.runs.load(Ordering::SeqCst) >= MESSAGES
    })
    .await;
    let first = worker.stop().await;
    assert!(ran, "first run handled {first}");
    assert_eq!(first.handled, MESSAGES as u64, "{first}");
    assert_eq!(runs_per_id(&state), each(1));
    let done = committed(&k, &topic).await;
    assert_eq!(done.values().sum::<i64>(), MESSAGES as i64, "{done:?}");
    wait_group_empty(&group).await;

    let b = brokers();
    let base = || -> Vec<String> {
        [
            "replay", "--kafka", &b, "--topic", &topic, "--group", &group,
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // 2. redeliver: offsets go back, the namespace stays, the store skips everything.
    let mut args = base();
    args.extend(["--from-time", &before, "--mode", "redeliver"].map(str::to_owned));
    let out = backstop(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (p, prev) in &done {
        let line = format!("reset group {group} on {topic}[{p}]: {prev} -> 0");
        assert!(stdout.contains(&line), "{line:?} missing in:\n{stdout}");
    }
    assert!(stdout.contains("redeliver"), "{stdout}");
    assert_eq!(committed_total(&k, &topic).await, 0, "offsets were reset");
    assert_eq!(epoch::current(k.config(), &topic).await.unwrap(), 0);

    let worker = start(&k, &topic, &store, &state).await;
    assert_eq!(worker.namespace, "epoch-0");
    let redelivered = wait_for(Duration::from_secs(30), || async {
        committed_total(&k, &topic).await >= MESSAGES as i64
    })
    .await;
    let second = worker.stop().await;
    assert!(redelivered, "redelivery did not finish: {second}");
    assert_eq!(second.received, MESSAGES as u64, "{second}");
    assert_eq!(second.duplicates, MESSAGES as u64, "{second}");
    assert_eq!(second.handled, 0, "{second}");
    assert_eq!(state.runs.load(Ordering::SeqCst), MESSAGES, "no rerun");
    assert_eq!(runs_per_id(&state), each(1));
    wait_group_empty(&group).await;

    // 3. reprocess: offsets go back and the epoch goes up; every message runs again.
    let mut args = base();
    args.extend(["--from-offset", "0", "--mode", "reprocess"].map(str::to_owned));
    let out = backstop(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("epoch is now 1"), "{stdout}");
    assert!(stdout.contains("\"epoch-1\""), "{stdout}");
    assert_eq!(epoch::current(k.config(), &topic).await.unwrap(), 1);
    assert_eq!(committed_total(&k, &topic).await, 0, "offsets were reset");

    let worker = start(&k, &topic, &store, &state).await;
    assert_eq!(worker.namespace, "epoch-1");
    let reran = wait_for(Duration::from_secs(30), || async {
        state.runs.load(Ordering::SeqCst) >= 2 * MESSAGES
    })
    .await;

    // 4. While this worker is in the group, a replay is refused and changes nothing.
    assert!(members(&group).await > 0, "the worker is a member");
    let mut args = base();
    args.extend(["--from-offset", "0", "--mode", "reprocess"].map(str::to_owned));
    let refused = backstop(args).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("consumer group \"{group}\" has"))
            && stderr.contains("active member(s): stop its workers first"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty(), "nothing reset");

    let third = worker.stop().await;
    assert!(reran, "reprocess did not finish: {third}");
    assert_eq!(third.handled, MESSAGES as u64, "{third}");
    assert_eq!(third.duplicates, 0, "{third}");
    assert_eq!(state.runs.load(Ordering::SeqCst), 2 * MESSAGES);
    assert_eq!(runs_per_id(&state), each(2));
    assert_eq!(
        epoch::current(k.config(), &topic).await.unwrap(),
        1,
        "the refused replay did not bump the epoch"
    );
    assert_eq!(committed_total(&k, &topic).await, MESSAGES as i64);
    assert_eq!(store.len(), 2 * MESSAGES, "one key per message per epoch");

    let mut gone = vec![topic.clone(), backstop_kafka::epoch_topic(&topic, &group)];
    gone.push(k.dlq_topic(&topic));
    gone.extend(k.retry_topics(&topic));
    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
    k.topics().unwrap().delete(&gone).await.unwrap();
    // Three group joins, two waits for an empty group and three CLI runs:
    // how long that takes says nothing about the behaviour, so it is only shown.
    eprintln!("the whole scenario took {:?}", started.elapsed());
}
