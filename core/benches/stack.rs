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
//! - `end_to_end/runner_memory_broker`: 100,000 messages published, then
//!   drained through `Runner` with concurrency 64.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backstop::memory::MemoryBroker;
use backstop::{
    AckError, Acker, CancellationToken, Context, Delivery, Handle, HandlerError, KeySource,
    MemoryStore, Message, Request, Runner, StackBuilder, handler_fn,
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
    group.bench_function("runner_memory_broker", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let broker = MemoryBroker::new();
                for i in 0..N {
                    let _ = broker.publish_now(
                        "bench",
                        Message::new(BODY).with_message_id(format!("m-{i}")),
                    );
                }
                let stack =
                    StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
                        .idempotency(
                            Arc::new(MemoryStore::new(200_000, Duration::from_secs(3600))),
                            KeySource::MessageId,
                        )
                        .build(handler_fn(noop));
                let start = Instant::now();
                let summary = Runner::new(broker.consume("bench", 64).until_drained(), stack)
                    .concurrency(64)
                    .run()
                    .await
                    .expect("run");
                total += start.elapsed();
                assert_eq!(summary.handled, N);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, per_message, end_to_end);
criterion_main!(benches);
