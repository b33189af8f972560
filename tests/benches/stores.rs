//! Idempotency stores side by side: claim + complete per key (one at a time
//! and 32 concurrent), and the full stack on the in-memory broker with each,
//! against a bare handler loop (decode + handler + ack, no runner, no stack).
//!
//! ```text
//! cargo bench -p backstop-tests --bench stores            # N = 20,000
//! BACKSTOP_BENCH_N=100000 cargo bench -p backstop-tests --bench stores
//! ```
//! The in-memory runs alternate `BENCH_ROUNDS` times (default 3)
//! and keep each contender's best. Per-message latency (p50/p99) is from the
//! source handing a delivery out to its ack having returned (see
//! `core/benches/support/latency.rs`); for the stores it is one claim +
//! complete. Ends with `BENCH-ROW` lines for `scripts/bench.sh`.
//! Needs Redis and PostgreSQL (scripts/services/all.sh).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::idempotency::Key;
use backstop::idempotency::{MemoryStore, Store};
use backstop::memory::MemoryBroker;
use backstop::request::Request;
use backstop::runner::Source;
use backstop::{
    Context, Handle, HandlerError, KeySource, Message, Runner, StackBuilder, handler_fn,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_redis::{RedisConfig, RedisStore};

#[path = "../../core/benches/support/latency.rs"]
mod latency;
use latency::{Latencies, Percentiles, Side, Timed, rate, rounds};

const LEASE: Duration = Duration::from_secs(30);

fn n() -> usize {
    std::env::var("BACKSTOP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Claims and completes `n` fresh keys with `workers` concurrent tasks;
/// returns ops/s and the p50/p99 of one claim + complete.
async fn claim_complete(store: Arc<dyn Store>, run: &str, n: usize, workers: usize) -> Side {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, run) = (Arc::clone(&store), run.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n / workers + 1);
            for i in (w..n).step_by(workers) {
                let key = Key::new(&format!("{run}-{i}"));
                let t = Instant::now();
                let claim = store.claim(&key, "bench", LEASE, 0).await.expect("claim");
                let fence = claim.fence().expect("a new key is acquired");
                store.complete(&key, fence).await.expect("complete");
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
    Side {
        rate: rate(n, elapsed),
        latency: Percentiles::of(&mut all),
    }
}

/// A broker whose queue `bench` holds `n` small JSON messages.
fn filled(n: usize) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for i in 0..n {
        let _ = broker.publish_now("bench", Message::new(format!(r#"{{"n":{i}}}"#)));
    }
    broker
}

/// The baseline: one loop taking each delivery from the in-memory source,
/// decoding it, calling the handler and acking, one after the other.
async fn bare_handler(n: usize) -> Side {
    let broker = filled(n);
    let latencies = Latencies::with_capacity(n);
    let mut source = Timed::new(
        broker.consume("bench", 64).until_drained(),
        latencies.clone(),
    );
    let handler =
        handler_fn(|_v: serde_json::Value, _c: Context| async { Ok::<(), HandlerError>(()) });
    let start = Instant::now();
    let mut handled = 0;
    while let Some(delivery) = source.next().await {
        let (message, acker, cancel) = delivery.expect("delivery").into_parts();
        let request = Request::<serde_json::Value>::decode(message, cancel, None);
        let payload = request.payload().cloned().expect("valid JSON");
        handler
            .handle(payload, request.context())
            .await
            .expect("handled");
        acker.ack().await.expect("ack");
        handled += 1;
    }
    let elapsed = start.elapsed();
    source.close().await;
    assert_eq!(handled, n);
    Side::measured(n, elapsed, &latencies)
}

/// The full stack on the in-memory broker with `store`: messages per second and latency.
async fn full_stack(store: Option<Arc<dyn Store>>, n: usize) -> Side {
    let broker = filled(n);
    let mut builder = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()));
    if let Some(store) = store {
        builder = builder.idempotency(store, KeySource::MessageId);
    }
    let stack = builder.build(handler_fn(|_v: serde_json::Value, _c: Context| async {
        Ok::<(), HandlerError>(())
    }));
    let latencies = Latencies::with_capacity(n);
    let source = Timed::new(
        broker.consume("bench", 64).until_drained(),
        latencies.clone(),
    );
    let start = Instant::now();
    let summary = Runner::new(source, stack)
        .concurrency(64)
        .run()
        .await
        .expect("run");
    let elapsed = start.elapsed();
    assert_eq!(summary.handled as usize, n);
    Side::measured(n, elapsed, &latencies)
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
    .expect("table")
    // Keys of earlier runs (of any release) do not matter here: a migration
    // whose window is already over takes the table as it is.
    .layout(backstop::idempotency::KeyLayout::Migrate {
        window: Duration::ZERO,
    });
    pg.migrate()
        .await
        .expect("postgres (run scripts/services/all.sh)");
    let pg: Arc<dyn Store> = Arc::new(pg);
    let stores: Vec<(&str, Arc<dyn Store>)> = vec![
        (
            "memory",
            Arc::new(MemoryStore::new(
                (3 + rounds(3)) * n + 16,
                Duration::from_secs(600),
            )),
        ),
        ("redis", redis),
        ("postgres", pg),
    ];
    let mut rows = Vec::new();
    println!("claim + complete, {n} keys");
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>10}",
        "store", "workers", "ops/s", "p50", "p99"
    );
    for (name, store) in &stores {
        for workers in [1, 32] {
            let label = format!("{run}-{name}-{workers}");
            let side = claim_complete(Arc::clone(store), &label, n, workers).await;
            let Percentiles { p50, p99 } = side.latency;
            println!(
                "{name:<10} {workers:>10} {:>12.0} {p50:>10.2?} {p99:>10.2?}",
                side.rate
            );
            let plural = if workers == 1 { "" } else { "s" };
            rows.push((
                format!("{name} store: claim + complete, {workers} worker{plural} (ops/s)"),
                None,
                side,
            ));
        }
    }

    // Alternating rounds, so a busy moment on a shared machine hits every contender.
    let rounds = rounds(3);
    let mut bare = Side::default();
    let mut base = Side::default();
    let mut with_store = vec![Side::default(); stores.len()];
    for _ in 0..rounds {
        bare = bare.best(bare_handler(n).await);
        base = base.best(full_stack(None, n).await);
        for ((_, store), best_run) in stores.iter().zip(&mut with_store) {
            *best_run = best_run.best(full_stack(Some(Arc::clone(store)), n).await);
        }
    }
    println!(
        "\nfull stack on the in-memory broker, {n} messages, concurrency 64 (best of {rounds})"
    );
    println!(
        "{:<10} {:>12} {:>8} {:>10} {:>10}",
        "store", "msgs/s", "ratio", "p50", "p99"
    );
    let line = |name: &str, side: Side| {
        let Percentiles { p50, p99 } = side.latency;
        println!(
            "{name:<10} {:>12.0} {:>8.2} {p50:>10.2?} {p99:>10.2?}",
            side.rate,
            side.rate / base.rate
        );
    };
    line("none", base);
    for ((name, _), side) in stores.iter().zip(&with_store) {
        line(name, *side);
        rows.push((
            format!("in-memory broker: bare handler loop vs Runner + full stack, {name} store"),
            Some(bare),
            *side,
        ));
    }
    println!("bare handler loop (decode + handler + ack, no runner, no stack):");
    line("-", bare);

    println!();
    // The in-memory rows first: the stores' rows have no raw side.
    rows.rotate_left(2 * stores.len());
    for (bench, raw, backstop) in rows {
        latency::bench_row(&bench, raw, backstop);
    }
}
