//! Consumption throughput: a raw lapin consumer with manual acks versus the
//! full backstop stack (ack, decode, metrics, idempotency on a MemoryStore,
//! dead-letter, retry) driven by the Runner, same prefetch, same broker.
//!
//! ```text
//! cargo bench -p backstop-rabbitmq --bench throughput            # 200,000 messages
//! cargo bench -p backstop-rabbitmq --bench throughput -- 50000   # or BENCH_MESSAGES=50000
//! ```
//!
//! `BENCH_PREFETCH` sets the prefetch (= the runner's concurrency), default
//! 128; `BACKSTOP_AMQP_URL` the broker. Each run publishes N messages of 256
//! bytes to a fresh quorum queue and drains them with a raw consumer acking
//! in its loop (`ack().await` one after the other); then, `BENCH_ROUNDS`
//! times (default 2), alternately with a raw consumer acking each delivery
//! on a task of its own (as the runner does) and through the stack. It
//! prints every rate and the ratio of the best stack run to the best raw
//! run, then a `BENCH-ROW` line for `scripts/bench.sh` with the best run of
//! each side and its per-message latency (p50/p99, defined in
//! `core/benches/support/latency.rs`: from the delivery leaving the client
//! or the source to its ack having returned).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstop::{
    CancellationToken, Context, HandlerError, KeySource, MemoryStore, Message, Runner,
    StackBuilder, handler_fn,
};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::lapin::{Connection, ConnectionProperties};
use backstop_rabbitmq::{RabbitMq, RabbitPublisher, Topology, url_from_env};
use bytes::Bytes;
use futures::StreamExt;

#[path = "../../../core/benches/support/latency.rs"]
mod latency;
use latency::{Latencies, Side, Timed, rate, rounds};

const PAYLOAD: usize = 256;

fn messages() -> usize {
    let from_args = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse::<usize>().ok());
    let from_env = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok());
    from_args.or(from_env).unwrap_or(200_000).max(1)
}

fn prefetch() -> usize {
    std::env::var("BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128usize)
        .clamp(1, 65_535)
}

async fn fill(publisher: &RabbitPublisher, queue: &str, run: &str, n: usize) -> Duration {
    let body = Bytes::from(vec![b'x'; PAYLOAD]);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let message = Message::new(body.clone()).with_message_id(format!("{run}-{i}"));
            let publisher = publisher.clone();
            let queue = queue.to_owned();
            async move { publisher.publish_to_queue(&queue, &message).await }
        })
        .buffer_unordered(2_000)
        .for_each(|r| async move { r.expect("publish confirmed") })
        .await;
    started.elapsed()
}

/// How the raw baseline acks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    /// `ack().await` in the consumer loop, one after the other.
    InLoop,
    /// Each delivery acked on a task of its own, as the runner does.
    Spawned,
}

/// The baseline: lapin's consumer stream with one manual ack per delivery,
/// itself on a spawned task (not on the main thread). Records each message's
/// latency from the stream yielding it to its ack having returned.
async fn raw(
    url: String,
    queue: String,
    n: usize,
    prefetch: usize,
    acks: Acks,
    latencies: Latencies,
) -> Duration {
    tokio::spawn(async move {
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let qos = BasicQosOptions { global: false };
        channel
            .basic_qos(u16::try_from(prefetch).unwrap_or(u16::MAX), qos)
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "raw-bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut received = 0;
        while let Some(delivery) = consumer.next().await {
            let taken = Instant::now();
            let acker = delivery.expect("delivery").acker;
            match acks {
                Acks::InLoop => {
                    assert!(acker.ack(BasicAckOptions::default()).await.expect("ack"));
                    latencies.record(taken);
                }
                Acks::Spawned => {
                    let latencies = latencies.clone();
                    tasks.spawn(async move {
                        assert!(acker.ack(BasicAckOptions::default()).await.expect("ack"));
                        latencies.record(taken);
                    });
                    while tasks.try_join_next().is_some() {}
                }
            }
            received += 1;
            if received == n {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed();
        // Cancel first (a round trip after the last ack): closing right after
        // the acks leaves some of them unapplied on a quorum queue.
        let _ = channel
            .basic_cancel("raw-bench".into(), BasicCancelOptions::default())
            .await;
        let _ = connection.close(200, "OK".into()).await;
        elapsed
    })
    .await
    .expect("raw consumer task")
}

/// The full stack: StackBuilder (idempotency on a MemoryStore) + Runner,
/// its source wrapped to record each message's latency.
async fn stack(
    rabbit: &RabbitMq,
    queue: &str,
    n: usize,
    prefetch: usize,
    latencies: Latencies,
) -> Duration {
    let handled = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (count, stop) = (Arc::clone(&handled), shutdown.clone());
    let handler = handler_fn(move |body: Bytes, _ctx: Context| {
        let (count, stop) = (Arc::clone(&count), stop.clone());
        async move {
            assert_eq!(body.len(), PAYLOAD);
            if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                stop.cancel();
            }
            Ok::<_, HandlerError>(())
        }
    });
    let stack = StackBuilder::<Bytes>::new(Arc::new(rabbit.dead_letter_sink()))
        .idempotency(
            Arc::new(MemoryStore::new(n * 2, Duration::from_secs(3600))),
            KeySource::MessageId,
        )
        .build(handler);
    let source = Timed::new(
        rabbit.source(queue, prefetch).await.expect("consume"),
        latencies,
    );
    let started = Instant::now();
    // On a spawned task, as a worker runs it (and as the raw baseline runs).
    let runner = Runner::new(source, stack)
        .concurrency(prefetch)
        .with_shutdown(shutdown);
    let summary = tokio::spawn(runner.run())
        .await
        .expect("runner task")
        .expect("run");
    let elapsed = started.elapsed();
    assert_eq!(summary.handled as usize, n, "{summary}");
    elapsed
}

/// CPU time (user + system) this process used so far, from /proc (Linux only; zero elsewhere).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Checks a drained queue stays empty: every ack reached the broker before the consumer closed.
async fn assert_drained(rabbit: &RabbitMq, queue: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = rabbit.message_count(queue).await.expect("queue exists");
    assert_eq!(
        left, 0,
        "{left} acked messages came back after the consumer closed"
    );
}

/// One line: rate, wall time, this process's CPU time per message and the
/// latency percentiles; returns the rate and percentiles.
fn report(what: &str, n: usize, wall: Duration, cpu: Duration, latencies: &Latencies) -> Side {
    let per_message = cpu.as_secs_f64() * 1e6 / n as f64;
    let side = Side::measured(n, wall, latencies);
    println!(
        "  {what:<28} {:>10.0} msg/s  ({wall:.2?}, client CPU {per_message:.1} µs/msg, {})",
        side.rate, side.latency
    );
    side
}

#[tokio::main]
async fn main() {
    let n = messages();
    let prefetch = prefetch();
    let url = url_from_env();
    let rabbit = RabbitMq::connect(url.clone())
        .await
        .expect("broker reachable (scripts/services/rabbitmq.sh)");
    let id = backstop::message::new_message_id();
    let topology = Topology::quorum(format!("bench-{}", &id[..12]));
    rabbit.declare(&topology).await.expect("declare");
    let queue = topology.queue().to_owned();
    let publisher = rabbit.publisher();
    println!(
        "backstop-rabbitmq throughput: {n} messages of {PAYLOAD} bytes, quorum queue, prefetch {prefetch}"
    );

    let published = fill(&publisher, &queue, "raw-loop", n).await;
    println!(
        "  publish (confirmed)          {:>10.0} msg/s",
        rate(n, published)
    );
    let cpu = cpu_time();
    let latencies = Latencies::with_capacity(n);
    let in_loop = raw(
        url.clone(),
        queue.clone(),
        n,
        prefetch,
        Acks::InLoop,
        latencies.clone(),
    )
    .await;
    let mut best_raw = report(
        "raw lapin, acks in the loop",
        n,
        in_loop,
        cpu_time() - cpu,
        &latencies,
    );
    assert_drained(&rabbit, &queue).await;
    // The two contenders alternate, so a busy moment on a shared machine hits both.
    let mut best_stack = Side::default();
    for round in 0..rounds(2) {
        fill(&publisher, &queue, &format!("raw-{round}"), n).await;
        let cpu = cpu_time();
        let latencies = Latencies::with_capacity(n);
        let spawned = raw(
            url.clone(),
            queue.clone(),
            n,
            prefetch,
            Acks::Spawned,
            latencies.clone(),
        )
        .await;
        let spawned = report(
            "raw lapin, acks on tasks",
            n,
            spawned,
            cpu_time() - cpu,
            &latencies,
        );
        assert_drained(&rabbit, &queue).await;
        fill(&publisher, &queue, &format!("stack-{round}"), n).await;
        let cpu = cpu_time();
        let latencies = Latencies::with_capacity(n);
        let stacked = stack(&rabbit, &queue, n, prefetch, latencies.clone()).await;
        let stacked = report("backstop stack", n, stacked, cpu_time() - cpu, &latencies);
        assert_drained(&rabbit, &queue).await;
        best_raw = best_raw.best(spawned);
        best_stack = best_stack.best(stacked);
    }
    println!(
        "  best raw {:.0} msg/s, best stack {:.0} msg/s",
        best_raw.rate, best_stack.rate
    );
    println!(
        "  ratio stack / raw            {:>10.3}  (goal >= 0.90)",
        best_stack.rate / best_raw.rate
    );
    latency::bench_row(
        &format!("RabbitMQ: raw lapin vs backstop stack (prefetch {prefetch})"),
        Some(best_raw),
        best_stack,
    );

    if let Ok(channel) = rabbit.channel().await {
        for q in [topology.queue().to_owned(), topology.dlq()] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                topology.dlx().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    rabbit.close().await;
}
