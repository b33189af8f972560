//! Throughput: a raw rdkafka consumer against the full backstop stack.
//!
//! Produces N 256-byte messages (default 500,000; `BACKSTOP_BENCH_MESSAGES`
//! or the first argument overrides) to a fresh 4-partition topic, then
//! consumes them twice, each time in a fresh consumer group:
//!
//! * raw: a `StreamConsumer` storing each message's offset (auto commit), as
//!   a spawned task on a worker thread;
//! * backstop: [`KafkaSource`](backstop_kafka::KafkaSource) + `StackBuilder`
//!   (idempotency on `MemoryStore`) + `Runner`.
//!
//! With `BACKSTOP_BENCH_SOURCE_ONLY` set, a third pass acks straight from
//! the source (no stack), to tell the adapter's cost from the stack's.
//! `BACKSTOP_BENCH_MAX_PENDING=n` sets the adapter's per-partition pause
//! threshold and `BACKSTOP_BENCH_CONSUMER=k=v,k=v` adds librdkafka consumer
//! properties to the adapter (the raw baseline keeps librdkafka's defaults).
//!
//! Rates are measured from the first message to the last, so the group join
//! is not counted. Each pass also records every message's latency, from
//! the client (`recv`) or the source handing it out to its offset store
//! having returned (p50/p99; see `core/benches/support/latency.rs`), and the
//! bench ends with `BENCH-ROW` lines for `scripts/bench.sh`. Needs the broker
//! (`BACKSTOP_KAFKA_BROKERS`, default 127.0.0.1:9092).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::{
    Context, HandlerError, KeySource, MemoryStore, Message, Publisher, Runner, Source,
    StackBuilder, handler_fn,
};
use backstop_kafka::{Kafka, TopicSpec};
use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[path = "../../../core/benches/support/latency.rs"]
mod latency;
use latency::{Latencies, Side, Timed, rate};

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

async fn raw(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies) -> Duration {
    // librdkafka's defaults, plus what at-least-once needs.
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.config().brokers)
        .set("group.id", unique("raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    tokio::spawn(async move {
        let mut first = None;
        for _ in 0..n {
            let m = consumer.recv().await.expect("recv");
            let received = Instant::now();
            first.get_or_insert(received);
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

async fn framework(kafka: &Kafka, topic: &str, n: usize, latencies: Latencies) -> Duration {
    let kafka = kafka.clone().configure(|c| c.group = unique("backstop"));
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
    let stack = StackBuilder::<Bytes>::new(Arc::new(kafka.dead_letter_sink().expect("sink")))
        .idempotency(store, KeySource::MessageId)
        .build(handler_fn(move |_b: Bytes, _ctx: Context| {
            let (count, first, last, done) =
                (Arc::clone(&c), Arc::clone(&f), Arc::clone(&l), d.clone());
            async move {
                let now = Instant::now();
                first.lock().unwrap().get_or_insert(now);
                if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    *last.lock().unwrap() = Some(now);
                    done.cancel();
                }
                Ok::<_, HandlerError>(())
            }
        }));
    let source = Timed::new(
        kafka.plain_source(&[topic], CONCURRENCY).expect("source"),
        latencies,
    );
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

/// Runs one pass with a fresh latency recorder and prints its line.
async fn pass<Fut>(what: &str, n: usize, run: impl FnOnce(Latencies) -> Fut) -> Side
where
    Fut: Future<Output = Duration>,
{
    let latencies = Latencies::with_capacity(n);
    let took = run(latencies.clone()).await;
    let side = Side::measured(n, took, &latencies);
    println!(
        "{what:<17}{:>10.0} msgs/s ({took:.2?}, {})",
        side.rate, side.latency
    );
    side
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("BACKSTOP_BENCH_MESSAGES").ok()?.parse().ok())
        .unwrap_or(500_000);
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
        let raw_side = pass("raw rdkafka:", n, |l| raw(&kafka, &topic, n, l)).await;
        let only_side = match std::env::var_os("BACKSTOP_BENCH_SOURCE_ONLY") {
            Some(_) => {
                Some(pass("KafkaSource only:", n, |l| source_only(&kafka, &topic, n, l)).await)
            }
            None => None,
        };
        let stack_side = pass("backstop stack:", n, |l| framework(&kafka, &topic, n, l)).await;
        println!("ratio backstop/raw: {:.2}", stack_side.rate / raw_side.rate);
        latency::bench_row(
            &format!("Kafka: raw rdkafka vs backstop stack ({PARTITIONS} partitions, concurrency {CONCURRENCY})"),
            Some(raw_side),
            stack_side,
        );
        if let Some(only) = only_side {
            latency::bench_row(
                "Kafka: raw rdkafka vs KafkaSource alone (no stack)",
                Some(raw_side),
                only,
            );
        }
        let _ = kafka.topics().expect("admin").delete(&[&topic]).await;
    });
}
