//! Throughput: raw rdkafka consumers against the backstop adapter and stack.
//!
//! Produces N 256-byte messages (default 200,000; `BACKSTOP_BENCH_MESSAGES`
//! or the first argument overrides) to a fresh 4-partition topic, then
//! reads them back in `BENCH_ROUNDS` rounds (default 5), each side once per
//! round in a fresh consumer group, the order of the sides rotating from
//! round to round:
//!
//! * **naive raw**: a `StreamConsumer` with librdkafka's defaults storing
//!   each offset, nothing else (a reference, not a fair baseline);
//! * **fair raw**: the same client configuration as the adapter's
//!   ([`KafkaConfig::consumer_config`](backstop_kafka::KafkaConfig::consumer_config),
//!   group replaced), each payload copied into an owned `Bytes` and passed
//!   to a no-op handler through `black_box`, then its offset stored;
//! * **source only**: [`KafkaSource`](backstop_kafka::KafkaSource), each
//!   delivery acked straight away (the adapter's cost);
//! * **stack**: `KafkaSource` + `StackBuilder` (idempotency on `MemoryStore`,
//!   keyed by message id) + `Runner`, a no-op `Bytes` handler;
//! * **stack EOS**: the same in exactly-once mode (`Kafka::exactly_once`:
//!   offsets committed in a transaction every 100 ms, the idempotency marks
//!   written after each commit); its clock stops at the N-th handler call,
//!   like the stack's, not at the last commit;
//! * **EOS ordered**: the same with ordered retries on
//!   (`Kafka::ordered_retries`, a 1 s retry tier, nothing failing: the
//!   cost of the switch);
//! * **EOS ord. 5%**: the same with every 20th offset failing its first
//!   attempt into the 1 s tier (its key's later messages parked behind it);
//!   its clock stops at the N-th *successful* handler call, so it includes
//!   the tier's delay and the parked messages' wait.
//!
//! Each side reports the **median** of its rounds: messages per second
//! (first message handed out to the N-th offset stored or handler called)
//! and this process's CPU per message (user + system from `/proc`, split
//! per thread into librdkafka's threads, backstop's poll thread, the tokio
//! workers and the rest). "Framework CPU" is a side's CPU per message
//! less the fair raw side's in the same run. `BACKSTOP_BENCH_MAX_PENDING=n`
//! sets the adapter's per-partition pause threshold and
//! `BACKSTOP_BENCH_CONSUMER=k=v,k=v` adds librdkafka consumer properties
//! to the adapter and the fair raw side; `BENCH_SIDES=fair,source` runs
//! only those sides (for a profiler; no table then). The bench ends with `BENCH-ROW`
//! and `BENCH-KAFKA` lines for `scripts/bench.sh`. Needs the broker
//! (`BACKSTOP_KAFKA_BROKERS`, default 127.0.0.1:9092).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::idempotency::MemoryStore;
use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop::{Context, HandlerError, KeySource, Message, Runner, StackBuilder, handler_fn};
use backstop_kafka::{Kafka, TopicSpec};
use bytes::Bytes;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[path = "../../../core/benches/support/latency.rs"]
mod latency;
use latency::{Latencies, Side, Timed, rate, rounds};

const PARTITIONS: i32 = 4;
const PAYLOAD: usize = 256;
const CONCURRENCY: usize = 64;

fn unique(prefix: &str) -> String {
    format!(
        "bench-{prefix}-{}",
        &backstop::message::new_message_id()[..12]
    )
}

async fn produce(kafka: &Kafka, topic: &str, n: usize) -> Duration {
    let publisher = kafka.publisher().expect("publisher");
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 20_000).min(n);
        let batch: Vec<Message> = (i..end)
            .map(|j| {
                Message {
                    payload: payload.clone(),
                    ..Message::new(Bytes::new())
                }
                .with_key(format!("k{}", j % 1024))
            })
            .collect();
        let results =
            futures::future::join_all(batch.iter().map(|m| publisher.publish(topic, m))).await;
        for r in results {
            r.expect("publish");
        }
        i = end;
    }
    started.elapsed()
}

/// The no-op handler both fair sides call.
#[inline(never)]
fn handle(payload: Bytes) {
    std::hint::black_box(payload);
}

async fn naive_raw(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies) -> Duration {
    // librdkafka's defaults, plus what at-least-once needs.
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.config().brokers)
        .set("group.id", unique("naive"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false");
    raw(config, topic, n, latencies, false).await
}

async fn fair_raw(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies) -> Duration {
    // The adapter's own client configuration, with a group of its own.
    let mut config = kafka.config().consumer_config();
    config.set("group.id", unique("fair"));
    raw(config, topic, n, latencies, true).await
}

/// A raw `StreamConsumer` loop storing each offset; with `handled`, each
/// payload is copied into an owned `Bytes` and passed to [`handle`] first.
async fn raw(
    config: rdkafka::ClientConfig,
    topic: &str,
    n: usize,
    latencies: Latencies,
    handled: bool,
) -> Duration {
    let consumer: StreamConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    tokio::spawn(async move {
        let mut first = None;
        let mut got = 0;
        while got < n {
            let m = match consumer.recv().await {
                Ok(m) => m,
                // A broker hiccup (transport failure): librdkafka recovers.
                Err(error) => {
                    eprintln!("raw: {error}");
                    continue;
                }
            };
            got += 1;
            let received = Instant::now();
            first.get_or_insert(received);
            if handled {
                handle(Bytes::copy_from_slice(m.payload().unwrap_or_default()));
            }
            consumer.store_offset_from_message(&m).expect("store");
            latencies.record(received);
        }
        first.map(|t| t.elapsed()).unwrap_or_default()
    })
    .await
    .expect("raw task")
}

async fn source_only(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies) -> Duration {
    let kafka = kafka.clone().configure(|c| c.group = unique("source"));
    let mut source = Timed::new(
        kafka.plain_source(&[topic], CONCURRENCY).expect("source"),
        latencies,
    );
    tokio::spawn(async move {
        let mut first = None;
        for _ in 0..n {
            let d = source.next().await.expect("open").expect("delivery");
            first.get_or_insert_with(Instant::now);
            d.ack().await.expect("ack");
        }
        let took = first.map(|t| t.elapsed()).unwrap_or_default();
        source.close().await;
        took
    })
    .await
    .expect("source task")
}

/// How a stack side runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    AtLeastOnce,
    ExactlyOnce,
    /// Exactly once with ordered retries; every `fail_every`-th offset
    /// (if any) fails its first attempt into the retry tier.
    Ordered {
        fail_every: Option<i64>,
    },
}

async fn stack(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies, mode: Mode) -> Duration {
    let kafka = kafka.clone().configure(|c| c.group = unique("backstop"));
    let fail_every = match mode {
        Mode::Ordered { fail_every } => fail_every,
        _ => None,
    };
    let ordered = matches!(mode, Mode::Ordered { .. });
    let kafka = if ordered {
        kafka.configure(|c| {
            c.retry_tiers = backstop_kafka::RetryTiers::new([Duration::from_secs(1)])
        })
    } else {
        kafka
    };
    let kafka = if mode != Mode::AtLeastOnce {
        kafka.exactly_once("bench").configure(|c| {
            if let (Some(eo), Some(n)) = (
                c.exactly_once.as_mut(),
                std::env::var("BACKSTOP_BENCH_COMMIT_EVERY")
                    .ok()
                    .and_then(|v| v.parse().ok()),
            ) {
                eo.commit_every = n;
            }
        })
    } else {
        kafka
    };
    let kafka = if ordered {
        let kafka = kafka.ordered_retries();
        // The group's retry and parked topics (outside the clock).
        kafka.ensure_topics([topic]).await.expect("companions");
        kafka
    } else {
        kafka
    };
    let count = Arc::new(AtomicUsize::new(0));
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let last: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let done = backstop::CancellationToken::new();
    let (c, f, l, d) = (
        Arc::clone(&count),
        Arc::clone(&first),
        Arc::clone(&last),
        done.clone(),
    );
    let store = Arc::new(MemoryStore::new(n + 1024, Duration::from_secs(3600)));
    let mut builder = StackBuilder::<Bytes>::new(Arc::new(kafka.dead_letter_sink().expect("sink")))
        .idempotency(store, KeySource::MessageId);
    if ordered {
        builder = builder
            .retry(backstop::RetryPolicy::retries(3).in_process_limit(Duration::ZERO))
            .retry_sink(Arc::new(kafka.retry_sink().expect("retry sink")));
    }
    let stack = builder.build(handler_fn(move |b: Bytes, ctx: Context| {
        handle(b);
        if let Some(every) = fail_every
            && ctx.attempt() == 1
            && ctx.meta().offset.unwrap_or(1) % every == 0
        {
            return std::future::ready(Err(
                HandlerError::transient("later").retry_after(Duration::from_millis(1))
            ));
        }
        let i = c.fetch_add(1, Ordering::Relaxed);
        if i == 0 {
            f.lock().unwrap().get_or_insert_with(Instant::now);
        }
        if i + 1 == n {
            *l.lock().unwrap() = Some(Instant::now());
            d.cancel();
        }
        std::future::ready(Ok::<_, HandlerError>(()))
    }));
    let source = if ordered {
        kafka.source(&[topic], CONCURRENCY).expect("source")
    } else {
        kafka.plain_source(&[topic], CONCURRENCY).expect("source")
    };
    let source = Timed::new(source, latencies);
    // Spawned on a worker thread, like the raw baseline's loop.
    let summary = tokio::spawn(
        Runner::new(source, stack)
            .concurrency(CONCURRENCY)
            .with_shutdown(done)
            .run(),
    )
    .await
    .expect("runner task")
    .expect("run");
    assert!(summary.handled as usize >= n, "{summary}");
    let (first, last) = (
        first.lock().unwrap().expect("first"),
        last.lock().unwrap().expect("last"),
    );
    last - first
}

/// CPU time per thread of this process, by thread id, with the thread's
/// name: `/proc/self/task/*/schedstat` (nanoseconds on the CPU; Linux,
/// empty elsewhere).
fn thread_times() -> HashMap<u32, (String, Duration)> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(ns) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        out.insert(tid, (name.trim().to_owned(), Duration::from_nanos(ns)));
    }
    out
}

/// Samples [`thread_times`] every 5 ms on a thread of its own, so threads
/// that end during a pass (the consumer's) keep their last figure.
struct Sampler {
    seen: Arc<Mutex<HashMap<u32, (String, Duration)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let seen = Arc::new(Mutex::new(thread_times()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let now = thread_times();
                    s.lock().unwrap().extend(now);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .expect("sampler thread");
        Sampler {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every thread's last figure, alive or ended.
    fn stop(mut self) -> HashMap<u32, (String, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.extend(thread_times());
        seen
    }
}

/// The group a thread's CPU is reported under.
fn group(name: &str) -> &'static str {
    if name.starts_with("rdk:") {
        "librdkafka"
    } else if name.starts_with("backstop-kafka") {
        "poll thread"
    } else if name.starts_with("tokio-r") {
        "tokio workers"
    } else {
        "other"
    }
}

const GROUPS: [&str; 4] = ["librdkafka", "poll thread", "tokio workers", "other"];

/// CPU spent between two snapshots, per group (a thread born in between
/// counts from zero).
fn spent(
    before: &HashMap<u32, (String, Duration)>,
    after: &HashMap<u32, (String, Duration)>,
) -> HashMap<&'static str, Duration> {
    let mut by_group = HashMap::new();
    for (tid, (name, time)) in after {
        if name == "cpu-sampler" {
            continue;
        }
        let was = before.get(tid).map_or(Duration::ZERO, |(_, t)| *t);
        *by_group.entry(group(name)).or_insert(Duration::ZERO) += time.saturating_sub(was);
    }
    by_group
}

/// One side's run: rate, latencies, CPU per message by thread group.
#[derive(Clone, Debug)]
struct Run {
    side: Side,
    cpu_us: f64,
    groups: HashMap<&'static str, f64>,
}

/// Runs one pass with a fresh latency recorder, measuring this process's CPU.
async fn pass<Fut>(what: &str, n: usize, run: impl FnOnce(Latencies) -> Fut) -> Run
where
    Fut: Future<Output = Duration>,
{
    let latencies = Latencies::with_capacity(n);
    let before = thread_times();
    let sampler = Sampler::start();
    let took = run(latencies.clone()).await;
    let after = sampler.stop();
    let side = Side::measured(n, took, &latencies);
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let groups: HashMap<&'static str, f64> = spent(&before, &after)
        .into_iter()
        .map(|(g, d)| (g, per_msg(d)))
        .collect();
    let cpu_us = groups.values().sum();
    let by_group: Vec<String> = GROUPS
        .iter()
        .map(|g| format!("{g} {:.2}", groups.get(g).copied().unwrap_or(0.0)))
        .collect();
    println!(
        "  {what:<14}{:>10.0} msgs/s ({took:.2?}, {}), CPU {cpu_us:.2} µs/msg ({})",
        side.rate,
        side.latency,
        by_group.join(", ")
    );
    Run {
        side,
        cpu_us,
        groups,
    }
}

/// The run of median rate, with the median CPU figures of all runs.
fn median(runs: &[Run]) -> Run {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut by_rate = runs.to_vec();
    by_rate.sort_by(|a, b| a.side.rate.total_cmp(&b.side.rate));
    let mut median = by_rate[by_rate.len() / 2].clone();
    median.cpu_us = mid(runs.iter().map(|r| r.cpu_us).collect());
    for g in GROUPS {
        let v = mid(runs
            .iter()
            .map(|r| r.groups.get(g).copied().unwrap_or(0.0))
            .collect());
        median.groups.insert(g, v);
    }
    median
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Naive,
    Fair,
    SourceOnly,
    Stack,
    StackExactlyOnce,
    Ordered,
    OrderedFailing,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Naive,
        Kind::Fair,
        Kind::SourceOnly,
        Kind::Stack,
        Kind::StackExactlyOnce,
        Kind::Ordered,
        Kind::OrderedFailing,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Naive => "naive raw",
            Kind::Fair => "fair raw",
            Kind::SourceOnly => "source only",
            Kind::Stack => "stack",
            Kind::StackExactlyOnce => "stack EOS",
            Kind::Ordered => "EOS ordered",
            Kind::OrderedFailing => "EOS ord. 5%",
        }
    }
}

/// Whether `BENCH_SIDES` (a comma-separated list of `naive`, `fair`,
/// `source`, `stack`, `eos`, `ordered`, `ordered5`; default all) selects `kind`.
fn selected(kind: Kind) -> bool {
    let Ok(sides) = std::env::var("BENCH_SIDES") else {
        return true;
    };
    let short = match kind {
        Kind::Naive => "naive",
        Kind::Fair => "fair",
        Kind::SourceOnly => "source",
        Kind::Stack => "stack",
        Kind::StackExactlyOnce => "eos",
        Kind::Ordered => "ordered",
        Kind::OrderedFailing => "ordered5",
    };
    sides.split(',').any(|s| s.trim() == short)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("BACKSTOP_BENCH_MESSAGES").ok()?.parse().ok())
        .unwrap_or(200_000);
    let rounds = rounds(5);
    let brokers = backstop_kafka::brokers_from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let kafka = Kafka::new(brokers, unique("producer")).configure(|c| {
            c.producer_properties
                .insert("linger.ms".into(), "20".into());
            c.retry_tiers = backstop_kafka::RetryTiers::new([]);
            for kv in std::env::var("BACKSTOP_BENCH_CONSUMER")
                .unwrap_or_default()
                .split(',')
            {
                if let Some((k, v)) = kv.split_once('=') {
                    c.consumer_properties.insert(k.into(), v.into());
                }
            }
            if let Some(n) = std::env::var("BACKSTOP_BENCH_MAX_PENDING")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                c.max_pending_per_partition = n;
            }
        });
        let topic = unique("throughput");
        kafka
            .topics()
            .expect("admin")
            .create(&[TopicSpec::new(topic.clone()).partitions(PARTITIONS)])
            .await
            .expect("topic");
        let produced = produce(&kafka, &topic, n).await;
        println!(
            "produced {n} x {PAYLOAD} B in {produced:.2?} ({:.0} msgs/s)",
            rate(n, produced)
        );
        let mut runs: HashMap<&'static str, Vec<Run>> = HashMap::new();
        for round in 0..rounds {
            println!("round {}/{rounds}", round + 1);
            for i in 0..Kind::ALL.len() {
                let kind = Kind::ALL[(i + round) % Kind::ALL.len()];
                if !selected(kind) {
                    continue;
                }
                let run = match kind {
                    Kind::Naive => pass(kind.name(), n, |l| naive_raw(&kafka, &topic, n, l)).await,
                    Kind::Fair => pass(kind.name(), n, |l| fair_raw(&kafka, &topic, n, l)).await,
                    Kind::SourceOnly => {
                        pass(kind.name(), n, |l| source_only(&kafka, &topic, n, l)).await
                    }
                    Kind::Stack => {
                        let mode = Mode::AtLeastOnce;
                        pass(kind.name(), n, |l| stack(&kafka, &topic, n, l, mode)).await
                    }
                    Kind::StackExactlyOnce => {
                        let mode = Mode::ExactlyOnce;
                        pass(kind.name(), n, |l| stack(&kafka, &topic, n, l, mode)).await
                    }
                    Kind::Ordered => {
                        let mode = Mode::Ordered { fail_every: None };
                        pass(kind.name(), n, |l| stack(&kafka, &topic, n, l, mode)).await
                    }
                    Kind::OrderedFailing => {
                        let mode = Mode::Ordered {
                            fail_every: Some(20),
                        };
                        pass(kind.name(), n, |l| stack(&kafka, &topic, n, l, mode)).await
                    }
                };
                runs.entry(kind.name()).or_default().push(run);
            }
        }
        if Kind::ALL.iter().any(|k| !selected(*k)) {
            // A partial run (for profiling): no table.
            let _ = kafka.topics().expect("admin").delete(&[&topic]).await;
            return;
        }
        let medians: HashMap<&'static str, Run> =
            runs.iter().map(|(k, v)| (*k, median(v))).collect();
        let fair = medians["fair raw"].clone();
        println!("\nmedians of {rounds} rounds, {n} messages each ({PARTITIONS} partitions, concurrency {CONCURRENCY}):");
        println!(
            "{:<12}{:>12}{:>9}{:>10}{:>11}{:>12}{:>12}{:>9}{:>8}",
            "side", "msgs/s", "vs fair", "CPU µs", "framework", "librdkafka", "poll thread", "tokio", "other"
        );
        for kind in Kind::ALL {
            let m = &medians[kind.name()];
            println!(
                "{:<12}{:>12.0}{:>9.2}{:>10.2}{:>11.2}{:>12.2}{:>12.2}{:>9.2}{:>8.2}",
                kind.name(),
                m.side.rate,
                m.side.rate / fair.side.rate,
                m.cpu_us,
                m.cpu_us - fair.cpu_us,
                m.groups["librdkafka"],
                m.groups["poll thread"],
                m.groups["tokio workers"],
                m.groups["other"],
            );
            println!(
                "BENCH-KAFKA\t{}\t{:.0}\t{:.3}\t{:.3}\t{:.3}",
                kind.name(),
                m.side.rate,
                m.side.rate / fair.side.rate,
                m.cpu_us,
                m.cpu_us - fair.cpu_us
            );
        }
        latency::bench_row(
            &format!("Kafka: fair raw rdkafka vs backstop stack ({PARTITIONS} partitions, concurrency {CONCURRENCY})"),
            Some(fair.side),
            medians["stack"].side,
        );
        latency::bench_row(
            "Kafka: fair raw rdkafka vs backstop stack in exactly-once mode",
            Some(fair.side),
            medians["stack EOS"].side,
        );
        latency::bench_row(
            "Kafka: stack in exactly-once mode vs the same with ordered retries (nothing failing)",
            Some(medians["stack EOS"].side),
            medians["EOS ordered"].side,
        );
        latency::bench_row(
            "Kafka: ordered retries, nothing failing vs 5 % failing into a 1 s tier (to the last success)",
            Some(medians["EOS ordered"].side),
            medians["EOS ord. 5%"].side,
        );
        latency::bench_row(
            "Kafka: fair raw rdkafka vs KafkaSource alone (no stack)",
            Some(fair.side),
            medians["source only"].side,
        );
        latency::bench_row(
            "Kafka: naive raw rdkafka (defaults, no copy) vs fair raw",
            Some(medians["naive raw"].side),
            fair.side,
        );
        let _ = kafka.topics().expect("admin").delete(&[&topic]).await;
    });
}
