//! Consumption throughput on a quorum queue: a raw lapin consumer acking
//! each delivery on a task of its own against the full backstop stack (ack,
//! decode, metrics, idempotency, dead-letter, retry) driven by the Runner,
//! same prefetch, same broker; the stack with a `MemoryStore`, then with a
//! `RedisStore` and a `PostgresStore`.
//!
//! ```text
//! cargo bench -p backstop-rabbitmq --bench throughput            # 200,000 messages
//! cargo bench -p backstop-rabbitmq --bench throughput -- 50000   # or BENCH_MESSAGES=50000
//! ```
//!
//! `BENCH_PREFETCH` sets the prefetch (= the runner's concurrency), default
//! 128; `BENCH_ROUNDS` the rounds, default 5; `BENCH_SIDES` a comma list
//! of the sides to run (`raw,memory,redis,postgres`, the default; a row
//! whose side did not run prints `-`); `BACKSTOP_AMQP_URL` the
//! broker, `BACKSTOP_REDIS_URL` and `BACKSTOP_PG_URL` the stores (a store
//! that cannot be reached is skipped, said so). Each round publishes N
//! messages of 256 bytes to a fresh quorum queue and drains them once per
//! side, in this order: raw, stack + `MemoryStore`, stack + `RedisStore`,
//! stack + `PostgresStore` (so a busy moment on a shared machine hits every
//! side). Each side is the **median** of its rounds: messages per second,
//! this process's CPU per message and the broker's (the `beam.smp` process
//! listening on the AMQP port, from `/proc`; `BENCH_BROKER_PID` overrides),
//! less what the broker burns idle (measured for 3 s before the rounds),
//! and for the Redis and PostgreSQL sides the store server's CPU per
//! message the same way (the process listening on the store's port, its
//! children alive and reaped: PostgreSQL's backends; `BENCH_REDIS_PID` and
//! `BENCH_PG_PID` override, for servers whose sockets this user cannot
//! read).
//! It prints, in this fixed order:
//!
//! ```text
//! BENCH-RABBIT<TAB>stack_memory_vs_raw<TAB>stack/s<TAB>raw/s<TAB>ratio<TAB>stack broker µs/msg<TAB>raw broker µs/msg<TAB>broker ratio
//! BENCH-RABBIT<TAB>stack_redis_vs_memory<TAB>redis/s<TAB>memory/s<TAB>ratio<TAB>…
//! BENCH-RABBIT<TAB>stack_postgres_vs_memory<TAB>postgres/s<TAB>memory/s<TAB>ratio<TAB>…
//! ```
//!
//! then a `BENCH-ROW` line for `scripts/bench.sh` (raw against the stack
//! with the `MemoryStore`, with their per-message latency p50/p99, defined
//! in `core/benches/support/latency.rs`: from the delivery leaving the
//! client or the source to its ack having returned).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstop::idempotency::MemoryStore;
use backstop::idempotency::{KeyLayout, Store};
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, Runner, StackBuilder, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::lapin::{Connection, ConnectionProperties};
use backstop_rabbitmq::{RabbitMq, RabbitPublisher, Topology, url_from_env};
use backstop_redis::{RedisConfig, RedisStore};
use bytes::Bytes;
use futures::StreamExt;

#[path = "../../../core/benches/support/latency.rs"]
mod latency;
use latency::{Latencies, Side, Timed, rounds};

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

/// The baseline: lapin's consumer stream with one manual ack per delivery,
/// each on a task of its own (as a worker runs its messages), itself on a
/// spawned task. Records each message's latency from the stream yielding
/// it to its ack having returned.
async fn raw(
    url: String,
    queue: String,
    n: usize,
    prefetch: usize,
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
            let latencies = latencies.clone();
            tasks.spawn(async move {
                assert!(acker.ack(BasicAckOptions::default()).await.expect("ack"));
                latencies.record(taken);
            });
            while tasks.try_join_next().is_some() {}
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

/// The full stack: StackBuilder (idempotency on `store`, keyed by message
/// id) + Runner, its source wrapped to record each message's latency.
async fn stack(
    rabbit: &RabbitMq,
    queue: &str,
    n: usize,
    prefetch: usize,
    store: Arc<dyn Store>,
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
        .idempotency(store, KeySource::MessageId)
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

/// The sum of two fields of `/proc/<pid>/stat` (counted after the command
/// name, from 0: 11 and 12 are user and system time, 13 and 14 those of
/// the reaped children), as time; zero when unreadable (not Linux).
fn stat_time(pid: &str, (a, b): (usize, usize)) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            Some(after.get(a)?.parse::<u64>().ok()? + after.get(b)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time (user + system) of process `pid` so far, from /proc (Linux
/// only; zero elsewhere).
fn cpu_time(pid: &str) -> Duration {
    stat_time(pid, (11, 12))
}

/// CPU time of process `pid`, of its children alive now (a PostgreSQL
/// server's backends) and of those it has reaped (`cutime` + `cstime`: a
/// backend that exited between two readings), from /proc.
fn tree_cpu_time(pid: &str) -> Duration {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child = entry.file_name().into_string().ok()?;
            child.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (parent == pid).then_some(child)
        });
    children.fold(cpu_time(pid) + stat_time(pid, (13, 14)), |sum, child| {
        sum + cpu_time(&child)
    })
}

/// The port of a `scheme://…` URL, or `default`.
fn port_of(url: &str, default: u16) -> u16 {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(default)
}

/// The pid of the broker: `BENCH_BROKER_PID`, else the process listening
/// on `port`.
fn broker_pid(port: u16) -> Option<String> {
    if let Ok(pid) = std::env::var("BENCH_BROKER_PID") {
        return Some(pid);
    }
    listener_pid(port)
}

/// The pid of the process listening on TCP `port`, found through /proc:
/// the socket's inode in /proc/net/tcp{,6}, then the process holding it.
fn listener_pid(port: u16) -> Option<String> {
    let suffix = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    let listening = cols.get(3) == Some(&"0A");
                    let ours = cols.get(1).is_some_and(|local| local.ends_with(&suffix));
                    if listening && ours {
                        Some(format!("socket:[{}]", cols.get(9)?))
                    } else {
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let holds = std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
                });
            holds.then_some(pid)
        })
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

/// What one side measured in one round.
#[derive(Clone, Copy)]
struct Measured {
    side: Side,
    /// This process's CPU per message, µs.
    client_us: f64,
    /// The broker's CPU per message, µs.
    broker_us: f64,
    /// The store server's CPU per message, µs (0 without one).
    store_us: f64,
}

/// The sides, in the order they run in each round and are reported.
const SIDES: [&str; 4] = [
    "raw lapin, acks on tasks",
    "stack + MemoryStore",
    "stack + RedisStore",
    "stack + PostgresStore",
];

/// The short names `BENCH_SIDES` takes, in the order of [`SIDES`].
const SIDE_NAMES: [&str; 4] = ["raw", "memory", "redis", "postgres"];

/// Which of [`SIDES`] run: `BENCH_SIDES` (comma-separated short names), or all.
fn chosen_sides() -> [bool; 4] {
    let Ok(list) = std::env::var("BENCH_SIDES") else {
        return [true; 4];
    };
    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
    for name in &wanted {
        assert!(
            SIDE_NAMES.contains(name),
            "BENCH_SIDES: unknown side {name:?} (sides: {})",
            SIDE_NAMES.join(",")
        );
    }
    SIDE_NAMES.map(|name| wanted.contains(&name))
}

/// The median of `runs` by each figure.
fn median(runs: &[Measured]) -> Option<Measured> {
    let mid = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    if runs.is_empty() {
        return None;
    }
    // The run of median rate carries its latencies.
    let mut by_rate = runs.to_vec();
    by_rate.sort_by(|a, b| a.side.rate.total_cmp(&b.side.rate));
    let mut median = by_rate[by_rate.len() / 2];
    median.client_us = mid(runs.iter().map(|m| m.client_us).collect());
    median.broker_us = mid(runs.iter().map(|m| m.broker_us).collect());
    median.store_us = mid(runs.iter().map(|m| m.store_us).collect());
    Some(median)
}

/// `, store CPU … µs/msg` for the sides with a store server (Redis,
/// PostgreSQL; `-` when its process was not found), else nothing.
fn store_figure(side: usize, store_us: Option<f64>) -> String {
    match (side, store_us) {
        (0 | 1, _) => String::new(),
        (_, Some(us)) => format!(", store CPU {us:.1} µs/msg"),
        (_, None) => ", store CPU - (server process not found)".to_owned(),
    }
}

/// A `BENCH-RABBIT` row: `side` against `base`.
fn row(name: &str, side: Option<Measured>, base: Option<Measured>) {
    match (side, base) {
        (Some(side), Some(base)) => println!(
            "BENCH-RABBIT\t{name}\t{:.0}\t{:.0}\t{:.3}\t{:.1}\t{:.1}\t{:.3}",
            side.side.rate,
            base.side.rate,
            side.side.rate / base.side.rate,
            side.broker_us,
            base.broker_us,
            side.broker_us / base.broker_us,
        ),
        _ => println!("BENCH-RABBIT\t{name}\t-\t-\t-\t-\t-\t-"),
    }
}

/// The Redis server's URL: `BACKSTOP_REDIS_URL`, else the local default.
fn redis_url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL server's URL: `BACKSTOP_PG_URL`, else the local default.
fn pg_url() -> String {
    std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".into())
}

/// The Redis and PostgreSQL stores, each `None` (said so) if unreachable.
async fn shared_stores(run: &str) -> (Option<Arc<dyn Store>>, Option<Arc<dyn Store>>) {
    let redis = RedisStore::connect_with(
        RedisConfig::new(redis_url())
            .prefix(format!("{run}:"))
            .ttl(Duration::from_secs(600)),
    )
    .await
    .map(|s| Arc::new(s) as Arc<dyn Store>)
    .map_err(|e| println!("  RedisStore skipped: {e}"))
    .ok();
    let pg = async {
        let store = PostgresStore::new(PgConfig::new(pg_url()).max_connections(32).pool()?)
            .with_table("backstop_bench_rabbit_keys")?
            // Keys of earlier runs do not matter here.
            .layout(KeyLayout::Migrate {
                window: Duration::ZERO,
            });
        store.migrate().await?;
        Ok::<_, Box<dyn std::error::Error>>(Arc::new(store) as Arc<dyn Store>)
    }
    .await
    .map_err(|e| println!("  PostgresStore skipped: {e}"))
    .ok();
    (redis, pg)
}

#[tokio::main]
async fn main() {
    let n = messages();
    let prefetch = prefetch();
    let url = url_from_env();
    let rabbit = RabbitMq::connect(url.clone())
        .await
        .expect("broker reachable (scripts/services/rabbitmq.sh)");
    let port = url::Url::parse(&url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(5672);
    let broker = broker_pid(port);
    let broker_cpu = || broker.as_deref().map_or(Duration::ZERO, cpu_time);
    // `BENCH_REDIS_PID` / `BENCH_PG_PID` when the servers' sockets cannot
    // be read (another user's processes, not running as root).
    let redis_server = std::env::var("BENCH_REDIS_PID")
        .ok()
        .or_else(|| listener_pid(port_of(&redis_url(), 6379)));
    let pg_server = std::env::var("BENCH_PG_PID")
        .ok()
        .or_else(|| listener_pid(port_of(&pg_url(), 5432)));
    // The store server of side `i`, if it has one and it was found.
    let store_server = |i: usize| match i {
        2 => redis_server.as_deref(),
        3 => pg_server.as_deref(),
        _ => None,
    };
    let store_found = |i: usize| store_server(i).is_some();
    let store_cpu = |i: usize| store_server(i).map_or(Duration::ZERO, tree_cpu_time);
    // What the broker and the store servers burn with no client (timers,
    // other queues, background writers): taken off each side's figure, so
    // it is the CPU the side caused.
    let idle_from = (broker_cpu(), store_cpu(2), store_cpu(3), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_for = idle_from.3.elapsed().as_secs_f64();
    let idle = (broker_cpu() - idle_from.0).as_secs_f64() / idle_for;
    let store_idle = [
        0.0,
        0.0,
        store_cpu(2).saturating_sub(idle_from.1).as_secs_f64() / idle_for,
        store_cpu(3).saturating_sub(idle_from.2).as_secs_f64() / idle_for,
    ];
    let id = backstop::message::new_message_id();
    let run = format!("bench-{}", &id[..12]);
    let topology = Topology::quorum(run.clone());
    rabbit.declare(&topology).await.expect("declare");
    let queue = topology.queue().to_owned();
    let publisher = rabbit.publisher();
    let rounds = rounds(5);
    println!(
        "backstop-rabbitmq throughput: {n} messages of {PAYLOAD} bytes, quorum queue, prefetch {prefetch}, {rounds} rounds, broker pid {}",
        broker
            .as_deref()
            .unwrap_or("not found (broker CPU reads 0)")
    );
    let (redis, pg) = shared_stores(&run).await;
    let mut runs: [Vec<Measured>; 4] = Default::default();
    let chosen = chosen_sides();
    for round in 0..rounds {
        for (i, name) in SIDES.iter().enumerate() {
            if !chosen[i] {
                continue;
            }
            let store: Option<Arc<dyn Store>> = match i {
                0 => None,
                1 => Some(Arc::new(MemoryStore::new(n * 2, Duration::from_secs(3600)))),
                2 => match &redis {
                    Some(redis) => Some(Arc::clone(redis)),
                    None => continue,
                },
                _ => match &pg {
                    Some(pg) => Some(Arc::clone(pg)),
                    None => continue,
                },
            };
            fill(&publisher, &queue, &format!("{run}-{round}-{i}"), n).await;
            let latencies = Latencies::with_capacity(n);
            let (client, server, store_server) = (cpu_time("self"), broker_cpu(), store_cpu(i));
            let took = match store {
                None => raw(url.clone(), queue.clone(), n, prefetch, latencies.clone()).await,
                Some(store) => stack(&rabbit, &queue, n, prefetch, store, latencies.clone()).await,
            };
            let per_message = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            let measured = Measured {
                side: Side::measured(n, took, &latencies),
                client_us: per_message(cpu_time("self") - client),
                broker_us: per_message((broker_cpu() - server).saturating_sub(took.mul_f64(idle))),
                store_us: per_message(
                    store_cpu(i)
                        .saturating_sub(store_server)
                        .saturating_sub(took.mul_f64(store_idle[i])),
                ),
            };
            println!(
                "  round {round} {name:<24} {:>9.0} msg/s  ({took:.2?}, client CPU {:.1} µs/msg, broker CPU {:.1} µs/msg{}, {})",
                measured.side.rate,
                measured.client_us,
                measured.broker_us,
                store_figure(i, store_found(i).then_some(measured.store_us)),
                measured.side.latency
            );
            assert_drained(&rabbit, &queue).await;
            runs[i].push(measured);
        }
    }
    let [raw_side, memory, redis_side, pg_side] = runs.map(|r| median(&r));
    println!("medians of {rounds} rounds:");
    for (i, (name, side)) in SIDES
        .iter()
        .zip([raw_side, memory, redis_side, pg_side])
        .enumerate()
    {
        if let Some(m) = side {
            println!(
                "  {name:<24} {:>9.0} msg/s, client CPU {:.1} µs/msg, broker CPU {:.1} µs/msg{}",
                m.side.rate,
                m.client_us,
                m.broker_us,
                store_figure(i, store_found(i).then_some(m.store_us))
            );
        }
    }
    println!(
        "goals: stack_memory_vs_raw ratio >= 1.2 and broker ratio <= 0.7; redis >= 0.8, postgres >= 0.5 of memory"
    );
    row("stack_memory_vs_raw", memory, raw_side);
    row("stack_redis_vs_memory", redis_side, memory);
    row("stack_postgres_vs_memory", pg_side, memory);
    if let (Some(raw_side), Some(memory)) = (raw_side, memory) {
        latency::bench_row(
            &format!("RabbitMQ: raw lapin vs backstop stack (prefetch {prefetch})"),
            Some(raw_side.side),
            memory.side,
        );
    }

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
