//! A batch handler against the per-message one, writing rows to
//! PostgreSQL (`BACKSTOP_PG_URL`): the same messages through the same
//! stack on the in-memory broker, one `INSERT` per message (16 pooled
//! connections, 64 messages in flight) against one `INSERT … SELECT FROM
//! unnest(…)` per batch (`build_batched`, at most 100 per batch, 256 in
//! flight). Medians of `BACKSTOP_BENCH_ROUNDS` (default 5) alternating
//! rounds of `BACKSTOP_BENCH_N` (default 20,000) messages.
//!
//! ```text
//! cargo bench -p backstop-postgres --bench batch
//! ```
//!
//! Prints `BENCH-BATCH<TAB>side<TAB>msgs/s` per side and one `BENCH-ROW`
//! for `scripts/bench.sh` (per-message insert in the raw column).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::batch::{BatchConfig, HandleBatch};
use backstop::memory::MemoryBroker;
use backstop::{Context, HandlerError, Message, Runner, StackBuilder, handler_fn};
use backstop_postgres::PgConfig;
use deadpool_postgres::Pool;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(what: &str, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::transient(format!("{what}: {e}"))
}

/// One `INSERT … SELECT FROM unnest(…)` for the whole batch.
#[derive(Clone)]
struct BulkInsert {
    pool: Pool,
    sql: Arc<str>,
}

impl HandleBatch<String> for BulkInsert {
    type Error = HandlerError;
    async fn handle_batch(&self, batch: Vec<(String, Context)>) -> Vec<Result<(), HandlerError>> {
        let ids: Vec<&str> = batch.iter().map(|(_, c)| c.message_id()).collect();
        let bodies: Vec<&str> = batch.iter().map(|(b, _)| b.as_str()).collect();
        let written = async {
            let client = self.pool.get().await.map_err(|e| fail("pool", e))?;
            client
                .execute(&*self.sql, &[&ids, &bodies])
                .await
                .map_err(|e| fail("insert", e))
        }
        .await;
        match written {
            Ok(_) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => batch
                .iter()
                .map(|_| Err(HandlerError::transient(e.to_string())))
                .collect(),
        }
    }
}

/// One round of `n` messages on `queue`: batched through `bulk`, or one
/// insert per message with `single`; its rate.
async fn round(
    broker: &MemoryBroker,
    queue: &str,
    n: usize,
    bulk: Option<&BulkInsert>,
    pool: &Pool,
    single: &Arc<str>,
) -> f64 {
    for i in 0..n {
        broker
            .publish_now(
                queue,
                Message::new(format!("row {i}")).with_message_id(format!("{queue}-{i}")),
            )
            .expect("publish");
    }
    let sink = Arc::new(broker.dead_letter_sink());
    let started = Instant::now();
    let summary = match bulk {
        Some(bulk) => {
            let stack = StackBuilder::<String>::new(sink).build_batched(
                bulk.clone(),
                BatchConfig::new(100, Duration::from_millis(2)),
            );
            Runner::new(broker.consume(queue, 256).until_drained(), stack)
                .concurrency(256)
                .run()
                .await
        }
        None => {
            let (pool, sql) = (pool.clone(), Arc::clone(single));
            let stack = StackBuilder::<String>::new(sink).build(handler_fn(
                move |body: String, ctx: Context| {
                    let (pool, sql) = (pool.clone(), Arc::clone(&sql));
                    async move {
                        let client = pool.get().await.map_err(|e| fail("pool", e))?;
                        client
                            .execute(&*sql, &[&ctx.message_id(), &body])
                            .await
                            .map_err(|e| fail("insert", e))?;
                        Ok::<_, HandlerError>(())
                    }
                },
            ));
            Runner::new(broker.consume(queue, 64).until_drained(), stack)
                .concurrency(64)
                .run()
                .await
        }
    }
    .expect("run");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(summary.handled, n as u64, "{summary}");
    n as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n = env_usize("BACKSTOP_BENCH_N", 20_000);
    let rounds = env_usize("BACKSTOP_BENCH_ROUNDS", 5).max(1);
    let url = std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned());
    let mut config = PgConfig::new(url);
    config.max_connections = 16;
    let pool = config.pool().expect("a PostgreSQL pool (BACKSTOP_PG_URL)");
    let table = format!("bench_batch_{}", std::process::id());
    let admin = pool
        .get()
        .await
        .expect("PostgreSQL is up (scripts/services/all.sh)");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, body text NOT NULL)"
        ))
        .await
        .expect("create the bench table");
    let single: Arc<str> =
        format!("INSERT INTO {table} (id, body) VALUES ($1, $2) ON CONFLICT DO NOTHING").into();
    let bulk = BulkInsert {
        pool: pool.clone(),
        sql: format!(
            "INSERT INTO {table} (id, body) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
        )
        .into(),
    };
    let broker = MemoryBroker::new();
    let (mut per_message, mut batched) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternating which side goes first.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_batched in order {
            let queue = format!("q{r}{}", u8::from(is_batched));
            let rate = round(
                &broker,
                &queue,
                n,
                is_batched.then_some(&bulk),
                &pool,
                &single,
            )
            .await;
            let side = if is_batched { "batched" } else { "per_message" };
            eprintln!("round {r}: {side} {rate:.0} msgs/s");
            if is_batched {
                batched.push(rate);
            } else {
                per_message.push(rate);
            }
        }
    }
    let _ = admin.batch_execute(&format!("DROP TABLE {table}")).await;
    let (single_rate, batch_rate) = (median(per_message), median(batched));
    println!("BENCH-BATCH\tper_message\t{single_rate:.0}");
    println!("BENCH-BATCH\tbatched\t{batch_rate:.0}");
    println!(
        "postgres insert, {n} messages, medians of {rounds} rounds: per message {single_rate:.0} msgs/s, batch handler {batch_rate:.0} msgs/s ({:.1}x)",
        batch_rate / single_rate
    );
    println!(
        "BENCH-ROW\tpostgres: per-message insert vs batch handler\t{single_rate:.0}\t{batch_rate:.0}\t-\t-\t-\t-"
    );
}
