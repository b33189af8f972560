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

use backstop::memory::MemoryBroker;
use backstop::{handler_fn, wire, Context, DecodeError, HandlerError, KeySource, MemoryStore, Message, Payload, RetryPolicy, Runner, StackBuilder};
use rand::Rng;
use serde::Deserialize;

const ORDERS: usize = 10_000;

/// An order as the shop publishes it.
#[derive(Clone, Debug, Deserialize)]
struct OrderPlaced {
    order_id: String,
    amount: i64,
    #[serde(default)]
    flaky: u32,
    #[serde(default)]
    rate_limited: bool,
}

impl Payload for OrderPlaced {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        backstop::payload::json(bytes)
    }
    fn key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

#[derive(Default)]
struct Ledger {
    executed: HashMap<String, u32>,
    transient_failures: u64,
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
            let amount = if roll < 0.015 { -5 } else { rng.random_range(1..500) };
            let flaky = u32::from(roll > 0.95) + u32::from(roll > 0.98);
            let rate_limited = (0.015..0.025).contains(&roll);
            format!(r#"{{"order_id":"{id}","amount":{amount},"flaky":{flaky},"rate_limited":{rate_limited}}}"#)
        };
        let message = Message::new(body.clone()).with_message_id(format!("msg-{i:05}"));
        order_of.insert(message.meta.message_id.clone(), id.clone());
        broker.publish_now("orders", message).expect("in-memory publish");
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
    let l = Arc::clone(&ledger);
    let handler = handler_fn(move |order: OrderPlaced, ctx: Context| {
        let ledger = Arc::clone(&l);
        async move {
            if order.amount < 0 {
                return Err(HandlerError::permanent(format!("order {} has a negative amount", order.order_id)));
            }
            if order.rate_limited && ctx.attempt() == 1 {
                return Err(HandlerError::transient("payment provider rate limit").retry_after(Duration::from_millis(200)));
            }
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            if ctx.attempt() <= order.flaky {
                ledger.transient_failures += 1;
                return Err(HandlerError::transient("inventory service timed out"));
            }
            *ledger.executed.entry(order.order_id).or_default() += 1;
            Ok(())
        }
    });

    let stack = StackBuilder::<OrderPlaced>::new(Arc::new(broker.dead_letter_sink()))
        .retry(
            RetryPolicy::retries(4)
                .backoff(Duration::from_millis(1), Duration::from_millis(20))
                .in_process_limit(Duration::from_millis(100)),
        )
        .retry_sink(Arc::new(broker.retry_sink()))
        .idempotency(Arc::new(MemoryStore::default()), KeySource::PayloadOrMessageId)
        .timeout(Duration::from_secs(5))
        .nack_delay(Duration::from_millis(50))
        .build(handler);

    let started = Instant::now();
    let summary = match Runner::new(broker.consume("orders", 64).until_drained(), stack)
        .concurrency(64)
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
    let dead: HashSet<&String> = dlq.iter().filter_map(|m| order_of.get(&m.meta.message_id)).collect();
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
    println!("  {:<34} {:>8}", "processed (handler succeeded)", summary.handled);
    println!("  {:<34} {:>8}", "retried (transient failures)", ledger.transient_failures);
    println!("  {:<34} {:>8}", "deferred (broker-delayed retry)", summary.deferred);
    println!("  {:<34} {:>8}", "deduplicated (resent orders)", summary.duplicates);
    println!("  {:<34} {:>8}", "dead-lettered", summary.dead_lettered);
    println!("  {:<34} {:>8}", "orders executed more than once", executed_twice);
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
        eprintln!("\nFAILED: {} lost, {executed_twice} executed twice", lost.len());
        ExitCode::FAILURE
    }
}
