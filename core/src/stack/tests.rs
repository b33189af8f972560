//! The whole stack on the in-memory broker: what is acked, redelivered and dead-lettered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::context::Context;
use crate::error::HandlerError;
use crate::handler::handler_fn;
use crate::idempotency::{KeySource, MemoryStore};
use crate::memory::MemoryBroker;
use crate::message::Message;
use crate::retry::RetryPolicy;
use crate::runner::{Runner, Summary};
use crate::stack::StackBuilder;
use crate::testing::Order;
use crate::wire;

fn order(id: &str, amount: i64) -> Message {
    Message::new(format!(r#"{{"order_id":"{id}","amount":{amount}}}"#))
        .with_message_id(format!("m-{id}"))
}

fn fast() -> RetryPolicy {
    RetryPolicy::retries(2).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// Runs `handler` over the queue `orders` until it is drained.
async fn drain<F, Fut>(
    broker: &MemoryBroker,
    builder: impl FnOnce(StackBuilder<Order>) -> StackBuilder<Order>,
    f: F,
) -> Summary
where
    F: Fn(Order, Context) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send,
{
    let base = StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
        .retry(fast())
        .nack_delay(Duration::from_millis(20));
    let stack = builder(base).built(handler_fn(f));
    Runner::new(broker.consume("orders", 4).until_drained(), stack)
        .concurrency(4)
        .run()
        .await
        .expect("run")
}

async fn success_is_acked_once() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let summary = drain(&broker, |b| b, |_o, _c| async { Ok(()) }).await;
    assert_eq!(summary.handled, 1);
    let stats = broker.stats("orders");
    assert_eq!((stats.acked, stats.ready, stats.unacked), (1, 0, 0));
}

async fn transient_failures_then_success_ack_once() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let summary = drain(
        &broker,
        |b| b,
        move |_o, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt() < 3 {
                    Err(HandlerError::transient("busy"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(summary.handled, 1);
    assert_eq!(broker.stats("orders").acked, 1);
    assert_eq!(broker.stats("orders.dlq").published, 0);
}

async fn permanent_failure_is_dead_lettered_then_acked() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", -1)).unwrap();
    let summary = drain(
        &broker,
        |b| b,
        |o, _c| async move {
            if o.amount < 0 {
                Err(HandlerError::permanent("negative amount"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(broker.stats("orders").acked, 1);
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("permanent"));
    assert_eq!(
        dlq[0].header(wire::ERROR),
        Some("permanent failure: negative amount")
    );
    assert_eq!(dlq[0].header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(dlq[0].header(wire::MESSAGE_ID), Some("m-a"));
    assert_eq!(dlq[0].header(wire::ATTEMPT), Some("1"));
}

async fn exhausted_timeouts_are_dead_lettered_as_timeout() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let summary = drain(
        &broker,
        |b| b.timeout(Duration::from_millis(20)),
        move |_o, _c| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "retries = 2: three attempts"
    );
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(
        broker.peek("orders.dlq")[0].header(wire::ERROR_KIND),
        Some("timeout")
    );
}

async fn panic_is_dead_lettered_and_the_runner_goes_on() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("boom", 5)).unwrap();
    broker.publish_now("orders", order("fine", 5)).unwrap();
    let summary = drain(
        &broker,
        |b| b,
        |o, _c| async move {
            if o.order_id == "boom" {
                panic!("handler bug");
            }
            Ok(())
        },
    )
    .await;
    assert_eq!((summary.handled, summary.dead_lettered), (1, 1));
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("panic"));
    assert!(dlq[0].header(wire::ERROR).unwrap().contains("handler bug"));
}

async fn poison_and_oversized_payloads_reach_the_dlq_without_running() {
    let broker = MemoryBroker::new();
    broker
        .publish_now(
            "orders",
            Message::new("{not json").with_message_id("poison"),
        )
        .unwrap();
    broker
        .publish_now("orders", order(&"x".repeat(300), 1).with_message_id("big"))
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let summary = drain(
        &broker,
        |b| b.max_payload(200),
        move |_o, _c| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(summary.dead_lettered, 2);
    let mut kinds: Vec<_> = broker
        .peek("orders.dlq")
        .iter()
        .map(|m| {
            (
                m.meta.message_id.clone(),
                m.header(wire::ERROR_KIND).map(str::to_owned),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("big".into(), Some("too_large".into())),
            ("poison".into(), Some("decode".into()))
        ]
    );
}

async fn duplicates_run_once() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    broker
        .publish_now("orders", order("a", 5).with_message_id("resent"))
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let summary = drain(
        &broker,
        |b| b.idempotency(Arc::new(MemoryStore::default()), KeySource::Payload),
        move |_o, _c| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((summary.handled, summary.duplicates), (1, 1));
    assert_eq!(broker.stats("orders").acked, 2);
}

async fn failing_dlq_keeps_the_source_unacked_then_dead_letters_once() {
    let broker = MemoryBroker::new();
    broker.set_max_len("orders.dlq", Some(0));
    broker.publish_now("orders", order("a", -1)).unwrap();
    let b2 = broker.clone();
    let healer = tokio::spawn(async move {
        // Let the sink fail a few times, then give the DLQ room.
        while b2.stats("orders.dlq").rejected < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            b2.stats("orders").acked,
            0,
            "source never acked while the DLQ refuses"
        );
        b2.set_max_len("orders.dlq", None);
    });
    let start = std::time::Instant::now();
    let summary = drain(
        &broker,
        |b| b,
        |_o, _c| async { Err(HandlerError::permanent("bad")) },
    )
    .await;
    healer.await.unwrap();
    assert!(summary.nacked >= 3);
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "nacks wait a backoff, no hot loop"
    );
    assert!(broker.stats("orders").redelivered >= 3);
    assert_eq!(
        broker.stats("orders.dlq").published,
        1,
        "dead-lettered exactly once"
    );
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(broker.stats("orders").acked, 1);
}

async fn broker_delayed_retry_comes_back_later_with_the_next_attempt() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = attempts.clone();
    let start = tokio::time::Instant::now();
    let summary = drain(
        &broker,
        |b| {
            b.retry(RetryPolicy::retries(3))
                .retry_sink(Arc::new(broker.retry_sink()))
        },
        move |_o, ctx| {
            a.lock()
                .unwrap()
                .push((ctx.attempt(), ctx.meta().redelivered));
            async move {
                if ctx.attempt() == 1 {
                    Err(HandlerError::transient("rate limited")
                        .retry_after(Duration::from_secs(30)))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert_eq!(*attempts.lock().unwrap(), [(1, false), (2, false)]);
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert_eq!((summary.deferred, summary.handled), (1, 1));
    assert_eq!(
        broker.stats("orders").acked,
        2,
        "original acked after the copy was confirmed, then the copy"
    );
}

async fn unfinished_work_at_the_shutdown_deadline_is_redelivered() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("slow", 5)).unwrap();
    let stack = StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink())).built(handler_fn(
        |_o: Order, _c: Context| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), HandlerError>(())
        },
    ));
    let stop = crate::CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(broker.consume("orders", 1), stack)
            .shutdown_deadline(Duration::from_millis(50))
            .with_shutdown(stop.clone())
            .run(),
    );
    while broker.stats("orders").unacked == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let summary = runner.await.unwrap().unwrap();
    assert_eq!(summary.abandoned, 1);
    let stats = broker.stats("orders");
    assert_eq!(
        (stats.ready, stats.unacked, stats.acked),
        (1, 0, 0),
        "back in the queue, not lost"
    );
    assert!(broker.peek("orders")[0].meta.redelivered);
}

async fn a_failed_dlq_write_keeps_the_attempt_count_so_the_handler_is_not_rerun() {
    let broker = MemoryBroker::new();
    broker.set_max_len("orders.dlq", Some(0));
    broker.publish_now("orders", order("a", 5)).unwrap();
    let b2 = broker.clone();
    let healer = tokio::spawn(async move {
        while b2.stats("orders.dlq").rejected < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        b2.set_max_len("orders.dlq", None);
    });
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let summary = drain(
        &broker,
        |b| b.idempotency(Arc::new(MemoryStore::default()), KeySource::MessageId),
        move |_o, _c| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::transient("always down")) }
        },
    )
    .await;
    healer.await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "retries = 2: three runs in all, not three per redelivery"
    );
    assert_eq!(summary.dead_lettered, 1);
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("exhausted"));
}

/// A DLQ sink over the broker's that refuses the first `refusals` writes
/// with `error` (a fresh one each time).
struct Refusing {
    inner: crate::memory::MemoryDeadLetterSink,
    refusals: AtomicU32,
    error: fn() -> crate::publish::PublishError,
}

#[async_trait::async_trait]
impl crate::dead_letter::DeadLetterSink for Refusing {
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), crate::error::SinkError> {
        let left = self.refusals.load(Ordering::SeqCst);
        if left > 0 {
            self.refusals.store(left - 1, Ordering::SeqCst);
            return Err(crate::error::SinkError::Publish {
                destination: "orders.dlq".into(),
                source: (self.error)(),
            });
        }
        self.inner.dead_letter(letter, destination).await
    }
}

async fn a_redelivery_after_a_failed_dead_letter_write_retries_only_the_write() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let sink = Refusing {
        inner: broker.dead_letter_sink(),
        refusals: AtomicU32::new(1),
        error: || crate::publish::PublishError::Nacked,
    };
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let stack = StackBuilder::<Order>::new(Arc::new(sink))
        .retry(fast())
        .nack_delay(Duration::from_millis(20))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::Payload)
        .built(handler_fn(move |_o: Order, _c: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HandlerError::timeout("the payment service did not answer")) }
        }));
    let summary = Runner::new(broker.consume("orders", 1).until_drained(), stack)
        .run()
        .await
        .expect("run");
    assert_eq!(summary.nacked, 1, "{summary}");
    assert_eq!(summary.dead_lettered, 1, "{summary}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the redelivery retried only the write, the handler did not run again"
    );
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("timeout"));
    assert_eq!(
        dlq[0].header(wire::ERROR),
        Some("transient failure: the payment service did not answer")
    );
    assert_eq!(dlq[0].header(wire::ATTEMPT), Some("3"));
}

async fn a_letter_that_can_never_be_written_halts_the_runner_without_an_ack() {
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", -1)).unwrap();
    broker.publish_now("orders", order("b", 5)).unwrap();
    let sink = Refusing {
        inner: broker.dead_letter_sink(),
        refusals: AtomicU32::new(u32::MAX),
        error: || crate::publish::PublishError::TooLarge { size: 2_000_000 },
    };
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let stack = StackBuilder::<Order>::new(Arc::new(sink))
        .retry(fast())
        .nack_delay(Duration::from_millis(20))
        .built(handler_fn(move |o: Order, _c: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if o.amount < 0 {
                    Err(HandlerError::permanent("negative amount"))
                } else {
                    Ok(())
                }
            }
        }));
    let runner = Runner::new(broker.consume("orders", 1), stack);
    let readiness = runner.readiness();
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());
    let mut halted = false;
    for _ in 0..200 {
        if readiness.get().is_err_and(|why| why.starts_with("halted")) {
            halted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(halted, "not halted: {:?}", readiness.get());
    let why = readiness.get().unwrap_err();
    assert!(why.contains("larger than the broker accepts"), "{why}");
    // Halted, not exited: the run ends only at shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!run.is_finished(), "the runner stays up, not ready");
    token.cancel();
    let Err(crate::runner::RunError::Halted { summary, .. }) = run.await.unwrap() else {
        panic!("a halted run reports it");
    };
    assert_eq!(summary.nacked, 1, "{summary}");
    assert_eq!(summary.dead_lettered, 0, "{summary}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no loop over the poison");
    let stats = broker.stats("orders");
    assert_eq!(stats.acked, 0, "never an ack without a stored letter");
    assert_eq!(stats.ready, 2, "both messages are left on the queue");
}

async fn a_retry_copy_that_can_never_be_written_is_dead_lettered() {
    struct Unsupported;
    #[async_trait::async_trait]
    impl crate::retry::RetrySink for Unsupported {
        async fn retry_later(
            &self,
            _: Message,
            _: Duration,
        ) -> Result<(), crate::error::SinkError> {
            Err(crate::error::SinkError::Unsupported(
                "no delay queues".into(),
            ))
        }
    }
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        drain(
            &broker,
            |b| b.retry_sink(Arc::new(Unsupported)),
            |_o, _c| async {
                Err(HandlerError::transient("rate limited").retry_after(Duration::from_secs(60)))
            },
        ),
    )
    .await
    .expect("the message is settled, not retried forever");
    assert_eq!(summary.dead_lettered, 1, "{summary}");
    assert_eq!(summary.nacked, 0, "{summary}");
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("exhausted"));
    let text = dlq[0].header(wire::ERROR).unwrap_or_default();
    assert!(
        text.contains("rate limited") && text.contains("no delay queues"),
        "{text}"
    );
}

tokio::task_local! {
    /// Set while a scenario runs on the stack composed of tower layers.
    static LAYERED: bool;
}

/// A payload whose decoder panics the first time it sees a body starting
/// with `boom` (a bug in a user's `Payload` code), and decodes it the next
/// time.
#[derive(Clone, Debug)]
struct Touchy(String);

/// The `boom` bodies a [`Touchy`] decoder panicked on.
static TOUCHY_PANICKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl crate::payload::Payload for Touchy {
    fn decode(bytes: &[u8]) -> Result<Self, crate::payload::DecodeError> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        if text.starts_with("boom") {
            let mut panicked = TOUCHY_PANICKED.lock().unwrap_or_else(|e| e.into_inner());
            if !panicked.contains(&text) {
                panicked.push(text);
                drop(panicked);
                panic!("decoder bug");
            }
        }
        Ok(Touchy(text))
    }
}

/// A decoder that panics once fails its message alone: it is redelivered
/// and runs, the others run once, and the runner goes on. On the pipeline
/// the decoder runs inside the message's future; the tower `Decode` layer
/// decodes in its `call`, which the runner guards as well.
async fn a_panicking_decoder_fails_its_message_alone_and_the_runner_goes_on() {
    let broker = MemoryBroker::new();
    let boom = if LAYERED.try_with(|layered| *layered).unwrap_or(false) {
        "boom-layered"
    } else {
        "boom-pipeline"
    };
    for body in ["fine", boom, "also fine"] {
        broker
            .publish_now("touchy", Message::new(body).with_message_id(body))
            .unwrap();
    }
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let builder = StackBuilder::<Touchy>::new(Arc::new(broker.dead_letter_sink()))
        .nack_delay(Duration::from_millis(20));
    let handler = handler_fn(move |t: Touchy, _c: Context| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(t.0);
            Ok::<(), HandlerError>(())
        }
    });
    let stack = if LAYERED.try_with(|layered| *layered).unwrap_or(false) {
        builder.build_layered(handler)
    } else {
        builder.build(handler)
    };
    let summary = Runner::new(broker.consume("touchy", 4).until_drained(), stack)
        .concurrency(4)
        .run()
        .await
        .expect("the runner goes on after a decoder panics");
    assert!(
        TOUCHY_PANICKED.lock().unwrap().contains(&boom.to_owned()),
        "the decoder panicked on {boom}"
    );
    assert_eq!(summary.ack_failed, 1, "the panicked message: {summary:?}");
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(
        handled,
        ["also fine", boom, "fine"],
        "the panicked message was redelivered and ran; the others ran once"
    );
    assert!(broker.peek("touchy.dlq").is_empty());
}

/// Builds the pipeline stack, or the tower-layer one inside [`LAYERED`].
trait Built {
    fn built<H: crate::handler::Handle<Order>>(self, handler: H) -> crate::stack::Stack;
}

impl Built for StackBuilder<Order> {
    fn built<H: crate::handler::Handle<Order>>(self, handler: H) -> crate::stack::Stack {
        if LAYERED.try_with(|layered| *layered).unwrap_or(false) {
            self.build_layered(handler)
        } else {
            self.build(handler)
        }
    }
}

// Every scenario runs twice: on the stack's pipeline and on the same
// stack composed of the public tower layers.

mod success_is_acked_once {
    #[tokio::test]
    async fn pipeline() {
        super::success_is_acked_once().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(true, super::success_is_acked_once())
            .await;
    }
}

mod transient_failures_then_success_ack_once {
    #[tokio::test]
    async fn pipeline() {
        super::transient_failures_then_success_ack_once().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(true, super::transient_failures_then_success_ack_once())
            .await;
    }
}

mod permanent_failure_is_dead_lettered_then_acked {
    #[tokio::test]
    async fn pipeline() {
        super::permanent_failure_is_dead_lettered_then_acked().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(true, super::permanent_failure_is_dead_lettered_then_acked())
            .await;
    }
}

mod exhausted_timeouts_are_dead_lettered_as_timeout {
    #[tokio::test]
    async fn pipeline() {
        super::exhausted_timeouts_are_dead_lettered_as_timeout().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::exhausted_timeouts_are_dead_lettered_as_timeout(),
            )
            .await;
    }
}

mod panic_is_dead_lettered_and_the_runner_goes_on {
    #[tokio::test]
    async fn pipeline() {
        super::panic_is_dead_lettered_and_the_runner_goes_on().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(true, super::panic_is_dead_lettered_and_the_runner_goes_on())
            .await;
    }
}

mod a_panicking_decoder_fails_its_message_alone_and_the_runner_goes_on {
    #[tokio::test]
    async fn pipeline() {
        super::a_panicking_decoder_fails_its_message_alone_and_the_runner_goes_on().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_panicking_decoder_fails_its_message_alone_and_the_runner_goes_on(),
            )
            .await;
    }
}

mod poison_and_oversized_payloads_reach_the_dlq_without_running {
    #[tokio::test]
    async fn pipeline() {
        super::poison_and_oversized_payloads_reach_the_dlq_without_running().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::poison_and_oversized_payloads_reach_the_dlq_without_running(),
            )
            .await;
    }
}

mod duplicates_run_once {
    #[tokio::test]
    async fn pipeline() {
        super::duplicates_run_once().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(true, super::duplicates_run_once())
            .await;
    }
}

mod failing_dlq_keeps_the_source_unacked_then_dead_letters_once {
    #[tokio::test]
    async fn pipeline() {
        super::failing_dlq_keeps_the_source_unacked_then_dead_letters_once().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::failing_dlq_keeps_the_source_unacked_then_dead_letters_once(),
            )
            .await;
    }
}

mod broker_delayed_retry_comes_back_later_with_the_next_attempt {
    #[tokio::test(start_paused = true)]
    async fn pipeline() {
        super::broker_delayed_retry_comes_back_later_with_the_next_attempt().await;
    }

    #[tokio::test(start_paused = true)]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::broker_delayed_retry_comes_back_later_with_the_next_attempt(),
            )
            .await;
    }
}

mod unfinished_work_at_the_shutdown_deadline_is_redelivered {
    #[tokio::test]
    async fn pipeline() {
        super::unfinished_work_at_the_shutdown_deadline_is_redelivered().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::unfinished_work_at_the_shutdown_deadline_is_redelivered(),
            )
            .await;
    }
}

mod a_failed_dlq_write_keeps_the_attempt_count_so_the_handler_is_not_rerun {
    #[tokio::test]
    async fn pipeline() {
        super::a_failed_dlq_write_keeps_the_attempt_count_so_the_handler_is_not_rerun().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_failed_dlq_write_keeps_the_attempt_count_so_the_handler_is_not_rerun(),
            )
            .await;
    }
}

mod a_redelivery_after_a_failed_dead_letter_write_retries_only_the_write {
    #[tokio::test]
    async fn pipeline() {
        super::a_redelivery_after_a_failed_dead_letter_write_retries_only_the_write().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_redelivery_after_a_failed_dead_letter_write_retries_only_the_write(),
            )
            .await;
    }
}

mod a_letter_that_can_never_be_written_halts_the_runner_without_an_ack {
    #[tokio::test]
    async fn pipeline() {
        super::a_letter_that_can_never_be_written_halts_the_runner_without_an_ack().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_letter_that_can_never_be_written_halts_the_runner_without_an_ack(),
            )
            .await;
    }
}

mod a_retry_copy_that_can_never_be_written_is_dead_lettered {
    #[tokio::test]
    async fn pipeline() {
        super::a_retry_copy_that_can_never_be_written_is_dead_lettered().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_retry_copy_that_can_never_be_written_is_dead_lettered(),
            )
            .await;
    }
}

/// A message past its `expires-at` header is dead-lettered with kind
/// `expired` without running; one without a timestamp or header runs; a
/// message older than the time to live (its publish time) expires too.
async fn expired_messages_are_dead_lettered_unrun_and_the_rest_run() {
    let broker = MemoryBroker::new();
    let long_ago = wire::format_time(std::time::SystemTime::UNIX_EPOCH);
    broker
        .publish_now(
            "orders",
            order("late", 5).with_header(wire::EXPIRES_AT, long_ago),
        )
        .unwrap();
    broker.publish_now("orders", order("fresh", 5)).unwrap();
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    let summary = drain(
        &broker,
        |b| b.time_to_live(crate::expiry::TimeToLive::max_age(Duration::from_secs(60))),
        move |o, _c| {
            r.lock().unwrap().push(o.order_id);
            async { Ok(()) }
        },
    )
    .await;
    assert_eq!(*ran.lock().unwrap(), ["fresh"], "the expired one never ran");
    assert_eq!((summary.handled, summary.dead_lettered), (1, 1));
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("expired"));
    assert_eq!(dlq[0].header(wire::MESSAGE_ID), Some("m-late"));
    assert!(
        dlq[0]
            .header(wire::ERROR)
            .is_some_and(|e| e.contains("expired at 1970-01-01T00:00:00.000Z")),
        "{:?}",
        dlq[0].header(wire::ERROR)
    );
    assert_eq!(broker.stats("orders").acked, 2, "both settled, none lost");

    // By age: the in-memory broker stamps the publish time.
    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("old", 5)).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let summary = drain(
        &broker,
        |b| {
            b.time_to_live(crate::expiry::TimeToLive::max_age(Duration::from_millis(
                20,
            )))
        },
        |_o, _c| async { Err(HandlerError::permanent("must not run")) },
    )
    .await;
    assert_eq!(summary.dead_lettered, 1);
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("expired"));
}

/// With `discard`, an expired message is acked without running, counted as
/// discarded (not handled), and with idempotency its key is settled: a
/// redelivered copy is a duplicate and does not run either.
async fn discarded_expired_messages_are_acked_unrun_and_counted() {
    let broker = MemoryBroker::new();
    let long_ago = wire::format_time(std::time::SystemTime::UNIX_EPOCH);
    let late = order("late", 5).with_header(wire::EXPIRES_AT, long_ago);
    broker.publish_now("orders", late.clone()).unwrap();
    broker.publish_now("orders", order("fresh", 5)).unwrap();
    let store = Arc::new(MemoryStore::default());
    let calls = Arc::new(AtomicU32::new(0));
    let run = |broker: &MemoryBroker| {
        let (store, calls) = (Arc::clone(&store), Arc::clone(&calls));
        let broker = broker.clone();
        async move {
            drain(
                &broker,
                |b| {
                    b.idempotency(store, KeySource::MessageId)
                        .time_to_live(crate::expiry::TimeToLive::header_only().discard())
                },
                move |_o, _c| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            )
            .await
        }
    };
    let summary = run(&broker).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the fresh one ran");
    assert_eq!((summary.handled, summary.discarded), (1, 1), "{summary}");
    assert!(summary.to_string().ends_with("· discarded 1"), "{summary}");
    assert_eq!(broker.stats("orders").acked, 2);
    assert!(
        broker.peek("orders.dlq").is_empty(),
        "nothing dead-lettered"
    );

    // The same message again (a redelivery after a lost ack): a duplicate.
    broker.publish_now("orders", late).unwrap();
    let again = run(&broker).await;
    assert_eq!((again.duplicates, again.discarded), (1, 0), "{again}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

mod expired_messages_are_dead_lettered_unrun_and_the_rest_run {
    #[tokio::test]
    async fn pipeline() {
        super::expired_messages_are_dead_lettered_unrun_and_the_rest_run().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::expired_messages_are_dead_lettered_unrun_and_the_rest_run(),
            )
            .await;
    }
}

mod discarded_expired_messages_are_acked_unrun_and_counted {
    #[tokio::test]
    async fn pipeline() {
        super::discarded_expired_messages_are_acked_unrun_and_counted().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::discarded_expired_messages_are_acked_unrun_and_counted(),
            )
            .await;
    }
}

/// A filter around each message (inside idempotency): orders of amount 0
/// are answered `Discarded` without reaching the handler (acked, counted,
/// and with idempotency settled, so a redelivered copy is a duplicate); a
/// layer error leaves its message unacked (nacked), never dead-lettered;
/// the rest pass through to the handler.
async fn a_filter_around_each_message_discards_or_defers_without_running() {
    use crate::runner::Source as _;
    use crate::stack::MessageService;
    use tower::ServiceExt as _;
    use tower::layer::layer_fn;

    // Orders of amount 0 are discarded; with `hold`, negative ones are
    // held (an error); everything else goes on to the handler.
    let filter = |hold: bool| {
        layer_fn(move |inner: MessageService<Order>| {
            MessageService::new(tower::service_fn(
                move |r: crate::request::Request<Order>| {
                    let inner = inner.clone();
                    async move {
                        match r.payload().map(|o| o.amount) {
                            Ok(0) => Ok(crate::outcome::Outcome::Discarded {
                                kind: crate::error::ErrorKind::Expired,
                            }),
                            Ok(a) if hold && a < 0 => {
                                Err(crate::error::Error::Busy { key: "held".into() })
                            }
                            _ => inner.oneshot(r).await,
                        }
                    }
                },
            ))
        })
    };
    let broker = MemoryBroker::new();
    let store: Arc<dyn crate::idempotency::Store> = Arc::new(MemoryStore::default());
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stack = |hold: bool| {
        let ran = Arc::clone(&ran);
        StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
            .retry(fast())
            .nack_delay(Duration::from_millis(5))
            .idempotency(Arc::clone(&store), KeySource::MessageId)
            .around_message(filter(hold))
            .built(handler_fn(move |o: Order, _c: Context| {
                ran.lock().unwrap().push(o.order_id);
                async { Ok::<_, HandlerError>(()) }
            }))
    };
    // Settles `n` deliveries of `orders` through `stack`, by message id.
    let settle = |stack: crate::stack::Stack, n: usize| {
        let mut source = broker.consume("orders", 4);
        async move {
            let mut settled = Vec::new();
            for _ in 0..n {
                let delivery = tokio::time::timeout(Duration::from_secs(5), source.next())
                    .await
                    .expect("a delivery in time")
                    .expect("the source is open")
                    .expect("a delivery");
                let id = delivery.message().meta.message_id.clone();
                settled.push((id, stack.clone().oneshot(delivery).await.ok()));
            }
            settled.sort_by(|a, b| a.0.cmp(&b.0));
            settled
        }
    };
    use crate::ack::Settled::{Acked, Nacked};
    use crate::outcome::Outcome::{Discarded, Duplicate, Handled};

    broker.publish_now("orders", order("zero", 0)).unwrap();
    broker.publish_now("orders", order("paid", 5)).unwrap();
    broker.publish_now("orders", order("held", -1)).unwrap();
    let first = settle(stack(true), 3).await;
    assert!(
        matches!(
            first.as_slice(),
            [
                (_, Some(Nacked(_))),
                (_, Some(Acked(Handled))),
                (_, Some(Acked(Discarded { .. })))
            ]
        ),
        "held, paid, zero: {first:?}"
    );
    assert_eq!(*ran.lock().unwrap(), ["paid"], "only the passed order ran");
    assert!(
        broker.peek("orders.dlq").is_empty(),
        "nothing dead-lettered"
    );
    let stats = broker.stats("orders");
    assert_eq!((stats.acked, stats.ready), (2, 1), "the held one is back");

    // The held one, let through now, and the discarded one again: a
    // duplicate (its key was settled), not run.
    broker.publish_now("orders", order("zero", 0)).unwrap();
    let second = settle(stack(false), 2).await;
    assert!(
        matches!(
            second.as_slice(),
            [(_, Some(Acked(Handled))), (_, Some(Acked(Duplicate)))]
        ) && second[1].0 == "m-zero",
        "{second:?}"
    );
    assert_eq!(*ran.lock().unwrap(), ["paid", "held"], "zero never ran");
}

mod a_filter_around_each_message_discards_or_defers_without_running {
    #[tokio::test]
    async fn pipeline() {
        super::a_filter_around_each_message_discards_or_defers_without_running().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_filter_around_each_message_discards_or_defers_without_running(),
            )
            .await;
    }
}

/// A pending dead letter (its first write failed) is written on the
/// redelivery before a user's layer around the message sees it: a filter
/// that would discard the redelivery cannot drop the letter.
async fn a_pending_letter_is_written_before_a_filter_around_the_message_sees_it() {
    use crate::stack::MessageService;
    use tower::ServiceExt as _;
    use tower::layer::layer_fn;

    let broker = MemoryBroker::new();
    broker.publish_now("orders", order("a", 5)).unwrap();
    let sink = Refusing {
        inner: broker.dead_letter_sink(),
        refusals: AtomicU32::new(1),
        error: || crate::publish::PublishError::Nacked,
    };
    // Lets the first delivery through, discards any later one.
    let seen = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&seen);
    let filter = layer_fn(move |inner: MessageService<Order>| {
        let s = Arc::clone(&s);
        MessageService::new(tower::service_fn(
            move |r: crate::request::Request<Order>| {
                let (inner, first) = (inner.clone(), s.fetch_add(1, Ordering::SeqCst) == 0);
                async move {
                    if first {
                        inner.oneshot(r).await
                    } else {
                        Ok(crate::outcome::Outcome::Discarded {
                            kind: crate::error::ErrorKind::Expired,
                        })
                    }
                }
            },
        ))
    });
    let stack = StackBuilder::<Order>::new(Arc::new(sink))
        .retry(fast())
        .nack_delay(Duration::from_millis(20))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::Payload)
        .around_message(filter)
        .built(handler_fn(|_o: Order, _c: Context| async {
            Err::<(), _>(HandlerError::permanent("card declined"))
        }));
    let summary = Runner::new(broker.consume("orders", 1).until_drained(), stack)
        .run()
        .await
        .expect("run");
    assert_eq!((summary.nacked, summary.dead_lettered), (1, 1), "{summary}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the filter saw the first delivery only"
    );
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1, "the letter was written, not discarded");
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("permanent"));
}

mod a_pending_letter_is_written_before_a_filter_around_the_message_sees_it {
    #[tokio::test]
    async fn pipeline() {
        super::a_pending_letter_is_written_before_a_filter_around_the_message_sees_it().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::a_pending_letter_is_written_before_a_filter_around_the_message_sees_it(),
            )
            .await;
    }
}

/// A transaction that records what a delivery produced and keeps its marks.
#[derive(Default)]
struct Recorded {
    records: std::sync::Mutex<Vec<(String, Message)>>,
    marks: std::sync::Mutex<Vec<crate::idempotency::HeldMarks>>,
}

impl crate::transaction::Transaction for Recorded {
    fn produce(&self, destination: &str, message: Message) -> Result<(), crate::error::SinkError> {
        self.records
            .lock()
            .unwrap()
            .push((destination.to_owned(), message));
        Ok(())
    }

    fn hold(&self, marks: crate::idempotency::HeldMarks) {
        self.marks.lock().unwrap().push(marks);
    }
}

/// A DLQ sink that writes into a delivery's transaction, and refuses to
/// write outside one.
struct IntoTransaction;

#[async_trait::async_trait]
impl crate::dead_letter::DeadLetterSink for IntoTransaction {
    async fn dead_letter(
        &self,
        _: Message,
        _: Option<&str>,
    ) -> Result<(), crate::error::SinkError> {
        Err(crate::error::SinkError::Unsupported(
            "outside a transaction".into(),
        ))
    }

    async fn dead_letter_in(
        &self,
        letter: Message,
        _: Option<&str>,
        transaction: &crate::transaction::InTransaction,
    ) -> Result<(), crate::error::SinkError> {
        transaction.0.produce("orders.dlq", letter)
    }
}

struct Counted(Arc<AtomicU32>);

#[async_trait::async_trait]
impl crate::delivery::Acker for Counted {
    async fn ack(self: Box<Self>) -> Result<(), crate::error::AckError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn nack(self: Box<Self>, _: bool) -> Result<(), crate::error::AckError> {
        Ok(())
    }
}

async fn in_a_transaction_letters_go_into_it_and_marks_wait_for_its_commit() {
    use crate::delivery::Delivery;
    use crate::idempotency::Store;
    use crate::idempotency::{Claim, Key, Keyspace};
    use tower::ServiceExt;

    let store = Arc::new(MemoryStore::default());
    let stack = StackBuilder::<Order>::new(Arc::new(IntoTransaction))
        .retry(fast())
        .nack_delay(Duration::from_millis(20))
        .idempotency(Arc::clone(&store) as Arc<dyn Store>, KeySource::Payload)
        .built(handler_fn(|o: Order, _c: Context| async move {
            if o.amount < 0 {
                Err(HandlerError::permanent("negative amount"))
            } else {
                Ok(())
            }
        }));
    let acks = Arc::new(AtomicU32::new(0));
    let run = |message: Message, transaction: Arc<Recorded>| {
        let mut message = message;
        message.meta.source = "orders".into();
        let delivery = Delivery::new(message, Counted(Arc::clone(&acks)))
            .in_transaction(transaction as Arc<dyn crate::transaction::Transaction>);
        stack.clone().oneshot(delivery)
    };
    let key = |id: &str| Keyspace::new("orders", None, None).key(&Key::new(id));
    let claim = |id: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim(&key(id), "other", Duration::from_secs(5), 0)
                .await
                .unwrap()
        }
    };

    let good = Arc::new(Recorded::default());
    run(order("a", 5), Arc::clone(&good))
        .await
        .expect("settled");
    let bad = Arc::new(Recorded::default());
    run(order("b", -1), Arc::clone(&bad))
        .await
        .expect("settled");
    assert_eq!(acks.load(Ordering::SeqCst), 2, "both acked (offsets done)");
    // The letter went into the transaction, not to the broker.
    let letters = std::mem::take(&mut *bad.records.lock().unwrap());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.header(wire::ERROR_KIND), Some("permanent"));
    assert!(good.records.lock().unwrap().is_empty());
    // Nothing is marked before the commit: the leases are still held.
    assert!(matches!(claim("a").await, Claim::Busy { .. }));
    assert!(matches!(claim("b").await, Claim::Busy { .. }));
    // Committed: the marks are written.
    let marks = good.marks.lock().unwrap().pop().expect("held");
    assert!(marks.completes());
    marks.write().await.expect("written");
    assert!(matches!(claim("a").await, Claim::Completed));
    // Aborted: the marks are dropped, the lease released without a failed run.
    drop(bad.marks.lock().unwrap().pop().expect("held"));
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match claim("b").await {
                Claim::Busy { .. } => tokio::time::sleep(Duration::from_millis(5)).await,
                other => return other,
            }
        }
    })
    .await
    .expect("released");
    assert!(
        matches!(
            released,
            Claim::Acquired {
                failed_runs: 0,
                crashed: false,
                ..
            }
        ),
        "{released:?}"
    );
}

mod in_a_transaction_letters_go_into_it_and_marks_wait_for_its_commit {
    #[tokio::test]
    async fn pipeline() {
        super::in_a_transaction_letters_go_into_it_and_marks_wait_for_its_commit().await;
    }

    #[tokio::test]
    async fn tower_layers() {
        super::LAYERED
            .scope(
                true,
                super::in_a_transaction_letters_go_into_it_and_marks_wait_for_its_commit(),
            )
            .await;
    }
}

/// A payload that counts its copies and decodes (for one test only).
#[derive(Debug, PartialEq)]
struct Tracked(String);

static TRACKED_CLONES: AtomicU32 = AtomicU32::new(0);
static TRACKED_DECODES: AtomicU32 = AtomicU32::new(0);

impl Clone for Tracked {
    fn clone(&self) -> Self {
        TRACKED_CLONES.fetch_add(1, Ordering::SeqCst);
        Tracked(self.0.clone())
    }
}

impl crate::payload::Payload for Tracked {
    fn decode(bytes: &[u8]) -> Result<Self, crate::payload::DecodeError> {
        TRACKED_DECODES.fetch_add(1, Ordering::SeqCst);
        Ok(Tracked(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// On the pipeline the handler gets the decoded payload moved to it, not a
/// copy; a retry decodes the message again and sees the same payload.
#[tokio::test]
async fn the_handler_gets_the_payload_moved_and_a_retry_decodes_it_again() {
    let broker = MemoryBroker::new();
    broker
        .publish_now("tracked", Message::new("order-7").with_message_id("t-1"))
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let stack = StackBuilder::<Tracked>::new(Arc::new(broker.dead_letter_sink()))
        .retry(fast())
        .build(handler_fn(move |t: Tracked, ctx: Context| {
            s.lock().unwrap().push(t);
            async move {
                if ctx.attempt() < 2 {
                    Err(HandlerError::transient("busy"))
                } else {
                    Ok(())
                }
            }
        }));
    let summary = Runner::new(broker.consume("tracked", 1).until_drained(), stack)
        .run()
        .await
        .expect("run");
    assert_eq!(summary.handled, 1, "{summary:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        [Tracked("order-7".into()), Tracked("order-7".into())],
        "both attempts saw the payload"
    );
    assert_eq!(TRACKED_CLONES.load(Ordering::SeqCst), 0, "no copy");
    assert_eq!(
        TRACKED_DECODES.load(Ordering::SeqCst),
        2,
        "decoded once, then again for the retry"
    );
}
