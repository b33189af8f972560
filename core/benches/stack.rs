//! The stack's own cost per message, and end-to-end throughput on the
//! in-memory broker.
//!
//! ```text
//! cargo bench -p backstop --bench stack
//! ```
//!
//! - `per_message/bare_handler`: decode + the handler, called directly.
//! - `per_message/full_stack`: ack + decode + metrics + idempotency on a
//!   `MemoryStore` + dead-letter + retry + catch-panic + the handler.
//! - `end_to_end/bare_loop`: the same 100,000 messages read, decoded,
//!   handled and acked in a plain loop (the floor, same run).
//! - `end_to_end/runner_memory_broker`: 100,000 messages published, then
//!   drained through `Runner` with concurrency 64 (one driver).
//! - `end_to_end/two_runners_memory_broker`: the same, drained by two
//!   runners (two consumers of the queue, concurrency 32 each), one per
//!   worker thread.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backstop::delivery::{Acker, Delivery};
use backstop::error::AckError;
use backstop::idempotency::MemoryStore;
use backstop::memory::MemoryBroker;
use backstop::request::Request;
use backstop::{
    CancellationToken, Context, Handle, HandlerError, KeySource, Message, Runner, StackBuilder,
    handler_fn,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower::ServiceExt;

struct NoopAcker;

#[async_trait::async_trait]
impl Acker for NoopAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _requeue: bool) -> Result<(), AckError> {
        Ok(())
    }
}

async fn noop(v: serde_json::Value, _ctx: Context) -> Result<(), HandlerError> {
    black_box(v);
    Ok(())
}

const BODY: &str = r#"{"order_id":"o-1","amount":42,"currency":"EUR"}"#;

fn per_message(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("per_message");
    group.throughput(Throughput::Elements(1));

    let handler = handler_fn(noop);
    group.bench_function("bare_handler", |b| {
        b.to_async(&rt).iter(|| async {
            let message = Message::new(BODY).with_message_id("m");
            let request =
                Request::<serde_json::Value>::decode(message, CancellationToken::new(), None);
            let payload = request.payload().cloned().expect("valid");
            handler.handle(payload, request.context()).await
        })
    });

    let broker = MemoryBroker::new();
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(
            Arc::new(MemoryStore::new(2_000_000, Duration::from_secs(3600))),
            KeySource::MessageId,
        )
        .build(handler_fn(noop));
    let seq = AtomicU64::new(0);
    group.bench_function("full_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let id = seq.fetch_add(1, Ordering::Relaxed);
            let delivery = Delivery::new(
                Message::new(BODY).with_message_id(format!("m-{id}")),
                NoopAcker,
            );
            stack.clone().oneshot(delivery).await
        })
    });
    let plain = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .build(handler_fn(noop));
    group.bench_function("stack_without_idempotency", |b| {
        b.to_async(&rt).iter(|| async {
            let id = seq.fetch_add(1, Ordering::Relaxed);
            let delivery = Delivery::new(
                Message::new(BODY).with_message_id(format!("m-{id}")),
                NoopAcker,
            );
            plain.clone().oneshot(delivery).await
        })
    });
    group.finish();
}

/// A broker whose queue `bench` holds `n` messages.
fn filled(n: u64) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for i in 0..n {
        let _ = broker.publish_now(
            "bench",
            Message::new(BODY).with_message_id(format!("m-{i}")),
        );
    }
    broker
}

/// The full stack with a `MemoryStore` keyed by message id.
fn full_stack(broker: &MemoryBroker, n: u64) -> backstop::Stack {
    StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(
            Arc::new(MemoryStore::new(
                usize::try_from(n * 2).unwrap_or(usize::MAX),
                Duration::from_secs(3600),
            )),
            KeySource::MessageId,
        )
        .build(handler_fn(noop))
}

/// Drains `n` messages through the full stack with `runners` runners on the
/// queue (64 in flight in all, split between them); returns how long it took.
async fn drain_with_runners(n: u64, runners: usize) -> Duration {
    let broker = filled(n);
    let stack = full_stack(&broker, n);
    let each = 64 / runners;
    let start = Instant::now();
    let runs: Vec<_> = (0..runners)
        .map(|_| {
            let runner = Runner::new(broker.consume("bench", each).until_drained(), stack.clone())
                .concurrency(each);
            tokio::spawn(runner.run())
        })
        .collect();
    let mut handled = 0;
    for run in runs {
        handled += run.await.expect("join").expect("run").handled;
    }
    let took = start.elapsed();
    assert_eq!(handled, n);
    took
}

fn end_to_end(c: &mut Criterion) {
    const N: u64 = 100_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Elements(N));
    group.sample_size(10);
    group.bench_function("bare_loop", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let broker = filled(N);
                let mut source = broker.consume("bench", 64).until_drained();
                let start = Instant::now();
                let mut handled = 0;
                while let Some(Ok(delivery)) = backstop::runner::Source::next(&mut source).await {
                    let value: serde_json::Value =
                        serde_json::from_slice(&delivery.message().payload).expect("json");
                    black_box(value);
                    delivery.ack().await.expect("ack");
                    handled += 1;
                }
                total += start.elapsed();
                assert_eq!(handled, N);
            }
            total
        })
    });
    for (name, runners) in [
        ("two_runners_memory_broker", 2),
        ("runner_memory_broker", 1),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drain_with_runners(N, runners).await;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_message, end_to_end);
criterion_main!(benches);
