//! Idempotency stores side by side: claim + complete per key (one at a time
//! and 32 concurrent), and the full stack on the in-memory broker with each.
//!
//! ```text
//! cargo bench -p backstop-tests --bench stores            # N = 20,000
//! BACKSTOP_BENCH_N=100000 cargo bench -p backstop-tests --bench stores
//! ```
//! Needs Redis and PostgreSQL (scripts/services/all.sh).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::idempotency::Key;
use backstop::memory::MemoryBroker;
use backstop::{
    Context, HandlerError, KeySource, MemoryStore, Message, Runner, StackBuilder, Store, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_redis::{RedisConfig, RedisStore};

const LEASE: Duration = Duration::from_secs(30);

fn n() -> usize {
    std::env::var("BACKSTOP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Claims and completes `n` fresh keys with `workers` concurrent tasks; returns ops/s and mean latency.
async fn claim_complete(
    store: Arc<dyn Store>,
    run: &str,
    n: usize,
    workers: usize,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, run) = (Arc::clone(&store), run.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n / workers + 1);
            for i in (w..n).step_by(workers) {
                let key = Key::new(&format!("{run}-{i}"));
                let t = Instant::now();
                store.claim(&key, "bench", LEASE, 0).await.expect("claim");
                store.complete(&key, "bench").await.expect("complete");
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("task"));
    }
    let elapsed = start.elapsed();
    all.sort();
    let p50 = all[all.len() / 2];
    let p99 = all[all.len() * 99 / 100];
    (n as f64 / elapsed.as_secs_f64(), p50, p99)
}

/// The full stack on the in-memory broker with `store`: messages per second.
async fn full_stack(store: Option<Arc<dyn Store>>, n: usize) -> f64 {
    let broker = MemoryBroker::new();
    for i in 0..n {
        let _ = broker.publish_now("bench", Message::new(format!(r#"{{"n":{i}}}"#)));
    }
    let mut builder = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()));
    if let Some(store) = store {
        builder = builder.idempotency(store, KeySource::MessageId);
    }
    let stack = builder.build(handler_fn(|_v: serde_json::Value, _c: Context| async {
        Ok::<(), HandlerError>(())
    }));
    let start = Instant::now();
    let summary = Runner::new(broker.consume("bench", 64).until_drained(), stack)
        .concurrency(64)
        .run()
        .await
        .expect("run");
    assert_eq!(summary.handled as usize, n);
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = n();
    let run = format!("bench-{}", backstop::message::new_message_id());
    let redis_url =
        std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pg_url = std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".into());
    let redis: Arc<dyn Store> = Arc::new(
        RedisStore::connect_with(
            RedisConfig::new(redis_url)
                .prefix(format!("{run}:"))
                .ttl(Duration::from_secs(600)),
        )
        .await
        .expect("redis (run scripts/services/all.sh)"),
    );
    let pg = PostgresStore::new(
        PgConfig::new(pg_url)
            .max_connections(32)
            .pool()
            .expect("pool"),
    )
    .with_table("backstop_bench_keys")
    .expect("table");
    pg.migrate()
        .await
        .expect("postgres (run scripts/services/all.sh)");
    let pg: Arc<dyn Store> = Arc::new(pg);
    let stores: Vec<(&str, Arc<dyn Store>)> = vec![
        (
            "memory",
            Arc::new(MemoryStore::new(4 * n + 16, Duration::from_secs(600))),
        ),
        ("redis", redis),
        ("postgres", pg),
    ];
    println!("claim + complete, {n} keys");
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>10}",
        "store", "workers", "ops/s", "p50", "p99"
    );
    for (name, store) in &stores {
        for workers in [1, 32] {
            let label = format!("{run}-{name}-{workers}");
            let (ops, p50, p99) = claim_complete(Arc::clone(store), &label, n, workers).await;
            println!("{name:<10} {workers:>10} {ops:>12.0} {p50:>10.2?} {p99:>10.2?}");
        }
    }
    println!("\nfull stack on the in-memory broker, {n} messages, concurrency 64");
    println!("{:<10} {:>12} {:>8}", "store", "msgs/s", "ratio");
    let base = full_stack(None, n).await;
    println!("{:<10} {base:>12.0} {:>8.2}", "none", 1.0);
    for (name, store) in stores {
        let rate = full_stack(Some(store), n).await;
        println!("{name:<10} {rate:>12.0} {:>8.2}", rate / base);
    }
}
