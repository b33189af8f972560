//! The quickstart: 10,000 orders through the full backstop stack on the
//! embedded in-memory broker. No services needed.
//!
//! ```text
//! cargo run --release -p backstop-examples --bin quickstart
//! ```
//!
//! A share of the orders fails transiently, a share is invalid (negative
//! amount), a share is not even JSON, a share is rate limited (retried later
//! through the broker), and a share is sent twice. The summary shows what
//! happened to each; `lost` must be 0, or the program exits non-zero.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::idempotency::MemoryStore;
use backstop::memory::MemoryBroker;
use backstop::{Classify, Context, Handle, Handler, Message, Payload, Runner, wire};
use rand::Rng;
use serde::Deserialize;

const ORDERS: usize = 10_000;

/// An order as the shop publishes it; `order_id` is the idempotency key.
#[derive(Clone, Debug, Deserialize, Payload)]
#[payload(source = "orders")]
struct OrderPlaced {
    #[payload(key)]
    order_id: String,
    amount: i64,
    #[serde(default)]
    flaky: u32,
    #[serde(default)]
    rate_limited: bool,
}

/// What can go wrong placing an order, and what backstop should do about it.
#[derive(Debug, thiserror::Error, Classify)]
enum PlaceError {
    #[error("order {0} has a negative amount")]
    #[classify(permanent)]
    NegativeAmount(String),
    #[error("payment provider rate limit")]
    #[classify(transient, retry_after = "2s")]
    RateLimited,
    #[error("inventory service timed out")]
    #[classify(transient)]
    InventoryTimeout,
}

#[derive(Default)]
struct Ledger {
    executed: HashMap<String, u32>,
    transient_failures: u64,
}

/// Places orders: the struct, its `handle` method, and the configuration.
#[derive(Handler)]
#[handler(
    payload = OrderPlaced,
    retries = 4,
    backoff(initial = "1ms", max = "20ms"),
    timeout = "5s",
    idempotency = "key_or_message_id",
    concurrency = 64
)]
struct PlaceOrder {
    ledger: Arc<Mutex<Ledger>>,
}

impl Handle<OrderPlaced> for PlaceOrder {
    type Error = PlaceError;

    async fn handle(&self, order: OrderPlaced, ctx: Context) -> Result<(), PlaceError> {
        if order.amount < 0 {
            return Err(PlaceError::NegativeAmount(order.order_id));
        }
        if order.rate_limited && ctx.attempt() == 1 {
            return Err(PlaceError::RateLimited);
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if ctx.attempt() <= order.flaky {
            ledger.transient_failures += 1;
            return Err(PlaceError::InventoryTimeout);
        }
        *ledger.executed.entry(order.order_id).or_default() += 1;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let broker = MemoryBroker::new();
    let mut rng = rand::rng();
    // Each message id maps to the order it carries (a poison message is its own order).
    let mut order_of: HashMap<String, String> = HashMap::new();
    let mut published = 0usize;
    for i in 0..ORDERS {
        let id = format!("order-{i:05}");
        let roll: f64 = rng.random();
        let body = if roll < 0.005 {
            "{\"order_id\": broken".to_owned()
        } else {
            let amount = if roll < 0.015 {
                -5
            } else {
                rng.random_range(1..500)
            };
            let flaky = u32::from(roll > 0.95) + u32::from(roll > 0.98);
            let rate_limited = (0.015..0.025).contains(&roll);
            format!(
                r#"{{"order_id":"{id}","amount":{amount},"flaky":{flaky},"rate_limited":{rate_limited}}}"#
            )
        };
        let message = Message::new(body.clone()).with_message_id(format!("msg-{i:05}"));
        order_of.insert(message.meta.message_id.clone(), id.clone());
        broker
            .publish_now("orders", message)
            .expect("in-memory publish");
        published += 1;
        if rng.random::<f64>() < 0.02 {
            // The producer retried after a lost confirm: same order, new message id.
            let resent = format!("msg-{i:05}-resent");
            order_of.insert(resent.clone(), id.clone());
            broker
                .publish_now("orders", Message::new(body).with_message_id(resent))
                .expect("in-memory publish");
            published += 1;
        }
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let handler = PlaceOrder {
        ledger: Arc::clone(&ledger),
    };
    let store = Arc::new(MemoryStore::default());
    // Delays over the in-process limit (1 s), such as the rate limit's 2 s, go back
    // through the broker instead of keeping a worker asleep.
    let stack = PlaceOrder::stack_builder(Arc::new(broker.dead_letter_sink()), store)
        .retry_sink(Arc::new(broker.retry_sink()))
        .nack_delay(Duration::from_millis(50))
        .build(handler);

    let queue = PlaceOrder::source_name().unwrap_or("orders");
    let started = Instant::now();
    let summary = match Runner::new(
        broker
            .consume(queue, PlaceOrder::CONCURRENCY)
            .until_drained(),
        stack,
    )
    .concurrency(PlaceOrder::CONCURRENCY)
    .run()
    .await
    {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("run failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed();

    let dlq = broker.peek("orders.dlq");
    let dead: HashSet<&String> = dlq
        .iter()
        .filter_map(|m| order_of.get(&m.meta.message_id))
        .collect();
    let orders: HashSet<&String> = order_of.values().collect();
    let ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
    let executed_twice = ledger.executed.values().filter(|n| **n > 1).count();
    let lost: Vec<&&String> = orders
        .iter()
        .filter(|id| !ledger.executed.contains_key(**id) && !dead.contains(*id))
        .collect();

    println!("backstop quickstart — {ORDERS} orders on the in-memory broker in {elapsed:.2?}\n");
    println!("  {:<34} {:>8}", "messages published", published);
    println!("  {:<34} {:>8}", "distinct orders", orders.len());
    println!(
        "  {:<34} {:>8}",
        "processed (handler succeeded)", summary.handled
    );
    println!(
        "  {:<34} {:>8}",
        "retried (transient failures)", ledger.transient_failures
    );
    println!(
        "  {:<34} {:>8}",
        "deferred (broker-delayed retry)", summary.deferred
    );
    println!(
        "  {:<34} {:>8}",
        "deduplicated (resent orders)", summary.duplicates
    );
    println!("  {:<34} {:>8}", "dead-lettered", summary.dead_lettered);
    println!(
        "  {:<34} {:>8}",
        "orders executed more than once", executed_twice
    );
    println!("  {:<34} {:>8}", "lost", lost.len());
    println!("\nfirst dead letters in orders.dlq:");
    for letter in dlq.iter().take(5) {
        println!(
            "  {:<12} kind={:<9} attempts={} error={}",
            letter.meta.message_id,
            letter.header(wire::ERROR_KIND).unwrap_or("?"),
            letter.header(wire::ATTEMPT).unwrap_or("?"),
            wire::truncate(letter.header(wire::ERROR).unwrap_or(""), 70)
        );
    }
    if lost.is_empty() && executed_twice == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "\nFAILED: {} lost, {executed_twice} executed twice",
            lost.len()
        );
        ExitCode::FAILURE
    }
}
