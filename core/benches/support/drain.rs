//! The fixed harness behind the instruction and allocation counts
//! (`benches/instr.rs`) and the allocation ceiling (`tests/alloc_ceiling.rs`).
//!
//! A queue of the in-memory broker is pre-filled with `n` orders
//! (`{"id":…,"amount":…}`, decoded from JSON, the idempotency key is `id`),
//! then drained on a current-thread runtime, with no metrics recorder, by
//! one of the [`Scenario`]s: the three of [`Scenario::ALL`] with no
//! tracing subscriber, and [`Scenario::LIFECYCLE`] with the subscriber of
//! [`info_subscriber`] installed by the caller. Everything the
//! drain does runs inside [`drain_queue`], which the callgrind run toggles
//! collection on; what is set up once (the broker, the filled queue, the
//! stack, the runtime) is outside it, and costs that do not grow with `n`
//! cancel out of the slope `(I(2n) − I(n)) / n`.

#![allow(dead_code)] // each user of this module uses part of it

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::memory::{MemoryBroker, MemorySource};
use backstop::payload::DecodeError;
use backstop::runner::Source;
use backstop::{
    Context, HandlerError, KeySource, Message, Payload, Runner, Stack, StackBuilder, handler_fn,
};

/// The queue the harness fills and drains.
const QUEUE: &str = "instr";

/// How many messages are in flight at once (the runner's concurrency and
/// the source's prefetch).
pub(crate) const CONCURRENCY: usize = 64;

/// The payload: `struct Order { id: u64, amount: i64 }` from JSON, keyed by
/// `id`.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct Order {
    /// The order's number: the idempotency key.
    pub(crate) id: u64,
    /// Its amount.
    pub(crate) amount: i64,
}

impl Payload for Order {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        backstop::payload::json(bytes)
    }

    fn key(&self) -> Option<String> {
        Some(self.id.to_string())
    }
}

/// What drains the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// The source read directly: decode, the handler, ack. The floor.
    BareLoop,
    /// `Runner` + the full stack without an idempotency store.
    StackNoStore,
    /// `Runner` + the full stack with a `MemoryStore` keyed by `id`.
    StackMemoryStore,
    /// `StackMemoryStore` with an `info` subscriber installed (see
    /// [`info_subscriber`]): what the per-message debug events cost when
    /// they are disabled by level.
    StackMemoryStoreInfoSubscriber,
}

impl Scenario {
    /// Every scenario, in the order the rows are printed.
    pub(crate) const ALL: [Scenario; 3] = [
        Scenario::BareLoop,
        Scenario::StackNoStore,
        Scenario::StackMemoryStore,
    ];

    /// The scenario of the `BENCH-INSTR-LIFECYCLE` line, measured against
    /// `StackMemoryStore`.
    pub(crate) const LIFECYCLE: Scenario = Scenario::StackMemoryStoreInfoSubscriber;

    /// The row name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::BareLoop => "bare_loop",
            Scenario::StackNoStore => "stack_no_store",
            Scenario::StackMemoryStore => "stack_memory_store",
            Scenario::StackMemoryStoreInfoSubscriber => "stack_memory_store_info_subscriber",
        }
    }

    /// The scenario named `name`.
    pub(crate) fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::LIFECYCLE])
            .find(|s| s.name() == name)
    }

    /// True when the caller installs [`info_subscriber`] around the drain.
    pub(crate) fn wants_subscriber(self) -> bool {
        self == Scenario::StackMemoryStoreInfoSubscriber
    }
}

/// The subscriber of [`Scenario::StackMemoryStoreInfoSubscriber`]: the fmt
/// subscriber an application installs, at `info`, writing to
/// [`std::io::sink`] (every line it emits is formatted, none is written).
pub(crate) fn info_subscriber() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish()
}

/// A filled queue and what drains it, built outside the measured region.
pub(crate) struct Prepared {
    scenario: Scenario,
    n: u64,
    broker: MemoryBroker,
    stack: Option<Stack>,
    runtime: tokio::runtime::Runtime,
}

/// Fills a queue with `n` orders and builds the scenario's stack.
pub(crate) fn prepare(scenario: Scenario, n: u64) -> Prepared {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let broker = filled(n);
    let stack = match scenario {
        Scenario::BareLoop => None,
        Scenario::StackNoStore => Some(
            StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
                .build(handler_fn(handle)),
        ),
        Scenario::StackMemoryStore | Scenario::StackMemoryStoreInfoSubscriber => {
            Some(memory_store_stack(&broker, STORE_CAPACITY))
        }
    };
    Prepared {
        scenario,
        n,
        broker,
        stack,
        runtime,
    }
}

/// A broker whose queue [`QUEUE`] holds `n` orders.
pub(crate) fn filled(n: u64) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for id in 0..n {
        let body = format!(r#"{{"id":{id},"amount":{}}}"#, id % 1000);
        broker
            .publish_now(QUEUE, Message::new(body).with_message_id(format!("m-{id}")))
            .expect("publish to the in-memory broker");
    }
    broker
}

/// The capacity of the `MemoryStore` the scenarios drain with, whatever
/// their size: more keys than the largest drain has, and the same store in
/// both runs of a slope (a store sized by `n` would be laid out, and split
/// into shards, differently in each, which does not cancel out).
pub(crate) const STORE_CAPACITY: usize = 100_000;

/// The full stack with a `MemoryStore` of `capacity` keys keyed by the
/// order's `id`, dead letters to `broker`.
pub(crate) fn memory_store_stack(broker: &MemoryBroker, capacity: usize) -> Stack {
    StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(
            Arc::new(MemoryStore::new(capacity, Duration::from_secs(3600))),
            KeySource::Payload,
        )
        .build(handler_fn(handle))
}

/// A source of [`QUEUE`] on `broker` taking `prefetch` at a time, ending
/// when the queue is drained.
pub(crate) fn source(broker: &MemoryBroker, prefetch: usize) -> MemorySource {
    broker.consume(QUEUE, prefetch).until_drained()
}

/// The handler: the order's work, and success.
async fn handle(order: Order, _ctx: Context) -> Result<(), HandlerError> {
    work(&order);
    Ok(())
}

/// What the handler does with an order (the bare loop calls it directly).
fn work(order: &Order) {
    black_box(order.amount);
}

/// Drains the prepared queue; returns how many messages were handled. The
/// measured region: the callgrind run collects only inside this function.
#[inline(never)]
pub(crate) fn drain_queue(prepared: Prepared) -> u64 {
    let Prepared {
        scenario,
        n,
        broker,
        stack,
        runtime,
    } = prepared;
    let source = source(&broker, CONCURRENCY);
    let handled = runtime.block_on(async move {
        match stack {
            None => bare_loop(source).await,
            Some(stack) => {
                let summary = Runner::new(source, stack)
                    .concurrency(CONCURRENCY)
                    .run()
                    .await
                    .expect("the runner drains the queue");
                summary.handled
            }
        }
    });
    assert_eq!(handled, n, "{}: every message handled", scenario.name());
    // Dropped outside the measured region's per-message work but inside the
    // function: a constant, so it cancels out of the slope.
    drop(runtime);
    handled
}

/// The floor: read, decode, run the handler, ack.
pub(crate) async fn bare_loop(mut source: impl Source) -> u64 {
    let mut handled = 0;
    while let Some(delivery) = source.next().await {
        let delivery = delivery.expect("the in-memory source does not fail");
        let (message, ack, _cancel) = delivery.into_parts();
        let order = Order::decode(&message.payload).expect("a valid order");
        work(&order);
        ack.ack().await.expect("ack on the in-memory broker");
        handled += 1;
    }
    source.close().await;
    handled
}
