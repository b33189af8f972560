//! Batch handlers on the in-memory broker: batches are cut by size and
//! linger, one message per key; a partial failure stays partial; retries
//! and batch-level failures run alone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::memory::MemoryBroker;
use crate::message::Message;
use crate::retry::RetryPolicy;
use crate::runner::{Runner, Summary};
use crate::stack::StackBuilder;
use crate::testing::Order;
use crate::wire;

/// Records each batch (order ids); fails ids by rule.
struct Recorder {
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    rule: fn(&Order, u32) -> Result<(), HandlerError>,
}

impl HandleBatch<Order> for Recorder {
    type Error = HandlerError;
    async fn handle_batch(&self, batch: Vec<(Order, Context)>) -> Vec<Result<(), HandlerError>> {
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|(o, _)| o.order_id.clone()).collect());
        batch
            .iter()
            .map(|(o, ctx)| (self.rule)(o, ctx.attempt()))
            .collect()
    }
}

fn order(id: &str, key: &str) -> Message {
    Message::new(format!(r#"{{"order_id":"{key}","amount":1,"tag":"{id}"}}"#))
        .with_message_id(format!("m-{id}"))
}

/// Publishes `n` orders with keys `k0`…, runs them through `handler` in
/// batches of at most `max` (`n` in flight, `attempts` attempts, each at
/// most `timeout`), and returns the broker and the run's summary.
async fn run_batched<H: HandleBatch<Order>>(
    n: usize,
    handler: H,
    max: usize,
    attempts: u32,
    timeout: Option<Duration>,
) -> (MemoryBroker, Summary) {
    let broker = MemoryBroker::new();
    for i in 0..n {
        broker
            .publish_now("orders", order(&i.to_string(), &format!("k{i}")))
            .unwrap();
    }
    let mut builder = StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink())).retry(
        RetryPolicy::retries(attempts).backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    let stack = builder.build_batched(handler, BatchConfig::new(max, Duration::from_millis(30)));
    let summary = Runner::new(broker.consume("orders", n).until_drained(), stack)
        .concurrency(n)
        .run()
        .await
        .unwrap();
    (broker, summary)
}

async fn drain(
    broker: &MemoryBroker,
    n: usize,
    max: usize,
    rule: fn(&Order, u32) -> Result<(), HandlerError>,
) -> (Summary, Vec<Vec<String>>) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let stack = StackBuilder::<Order>::new(Arc::new(broker.dead_letter_sink()))
        .retry(RetryPolicy::retries(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .build_batched(
            Recorder {
                batches: Arc::clone(&batches),
                rule,
            },
            BatchConfig::new(max, Duration::from_millis(30)),
        );
    let summary = Runner::new(broker.consume("orders", n).until_drained(), stack)
        .concurrency(n)
        .run()
        .await
        .unwrap();
    let batches = batches.lock().unwrap().clone();
    (summary, batches)
}

fn ok(_: &Order, _: u32) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn messages_in_flight_go_in_batches_of_at_most_max_each_once() {
    let broker = MemoryBroker::new();
    for i in 0..20 {
        broker
            .publish_now("orders", order(&i.to_string(), &format!("k{i}")))
            .unwrap();
    }
    let (summary, batches) = drain(&broker, 20, 8, ok).await;
    assert_eq!(summary.handled, 20, "{summary}");
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
    assert!(sizes.len() <= 4, "batched, not one by one: {sizes:?}");
    let mut all: Vec<String> = batches.concat();
    assert_eq!(all.len(), 20, "nobody ran twice: {batches:?}");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20, "each message in exactly one batch");
    assert_eq!(broker.stats("orders").acked, 20);
}

#[tokio::test]
async fn a_batch_holds_one_message_per_key() {
    let broker = MemoryBroker::new();
    for i in 0..6 {
        // Three keys, two messages each.
        broker
            .publish_now("orders", order(&i.to_string(), &format!("k{}", i % 3)))
            .unwrap();
    }
    let (summary, batches) = drain(&broker, 6, 10, ok).await;
    assert_eq!(summary.handled, 6);
    for batch in &batches {
        let mut keys = batch.clone();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), batch.len(), "a key twice in {batch:?}");
    }
    assert!(batches.len() >= 2, "{batches:?}");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_alone_and_the_rest_are_handled_once() {
    let broker = MemoryBroker::new();
    for i in 0..10 {
        broker
            .publish_now("orders", order(&i.to_string(), &format!("k{i}")))
            .unwrap();
    }
    let (summary, batches) = drain(&broker, 10, 10, |o, _| match o.order_id.as_str() {
        "k4" => Err(HandlerError::permanent("poison")),
        _ => Ok(()),
    })
    .await;
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (9, 1),
        "{summary}"
    );
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(wire::MESSAGE_ID), Some("m-4"));
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("permanent"));
    let runs: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(runs, 10, "nobody ran twice: {batches:?}");
}

#[tokio::test]
async fn a_transient_failure_is_retried_alone() {
    let broker = MemoryBroker::new();
    for i in 0..6 {
        broker
            .publish_now("orders", order(&i.to_string(), &format!("k{i}")))
            .unwrap();
    }
    let (summary, batches) = drain(&broker, 6, 6, |o, attempt| {
        if o.order_id == "k2" && attempt == 1 {
            Err(HandlerError::transient("deadlock, try again"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(summary.handled, 6, "{summary}");
    let k2: Vec<&Vec<String>> = batches
        .iter()
        .filter(|b| b.contains(&"k2".into()))
        .collect();
    assert_eq!(k2.len(), 2, "{batches:?}");
    assert_eq!(*k2[1], ["k2"], "the retry ran alone");
    let runs: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(runs, 7, "only the failed one ran again: {batches:?}");
}

/// A handler that panics on any batch holding `k3` (a poison message that
/// breaks the bulk statement): the first batch fails as a whole, each of
/// its messages is retried alone, so only `k3` ends in the DLQ (kind
/// `panic` once its attempts are spent) and every other one is handled.
#[tokio::test]
async fn a_panicking_batch_is_retried_message_by_message() {
    struct Panics(Arc<AtomicU32>);
    impl HandleBatch<Order> for Panics {
        type Error = HandlerError;
        async fn handle_batch(
            &self,
            batch: Vec<(Order, Context)>,
        ) -> Vec<Result<(), HandlerError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            assert!(!batch.iter().any(|(o, _)| o.order_id == "k3"), "bad row");
            batch.iter().map(|_| Ok(())).collect()
        }
    }
    let calls = Arc::new(AtomicU32::new(0));
    let (broker, summary) = run_batched(5, Panics(Arc::clone(&calls)), 5, 3, None).await;
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (4, 1),
        "{summary}"
    );
    let dlq = broker.peek("orders.dlq");
    assert_eq!(dlq[0].header(wire::MESSAGE_ID), Some("m-3"));
    assert_eq!(dlq[0].header(wire::ERROR_KIND), Some("panic"));
}

#[tokio::test]
async fn a_wrong_number_of_results_fails_the_batch_and_each_is_retried_alone() {
    /// One result too few for a batch of several; records the sizes.
    struct Short(Arc<Mutex<Vec<usize>>>);
    impl HandleBatch<Order> for Short {
        type Error = HandlerError;
        async fn handle_batch(
            &self,
            batch: Vec<(Order, Context)>,
        ) -> Vec<Result<(), HandlerError>> {
            self.0.lock().unwrap().push(batch.len());
            batch
                .iter()
                .skip(usize::from(batch.len() > 1))
                .map(|_| Ok(()))
                .collect()
        }
    }
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (_broker, summary) = run_batched(4, Short(Arc::clone(&sizes)), 4, 3, None).await;
    assert_eq!(
        summary.handled, 4,
        "retried alone, each answered: {summary}"
    );
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes[0], 4, "the first batch held all four: {sizes:?}");
    assert_eq!(&sizes[1..], [1, 1, 1, 1], "then each alone: {sizes:?}");
}

/// A batch slower than the stack's timeout: every member's attempt times
/// out while the batch runs on, and each retry waits for that batch and,
/// since it handled the message, succeeds without running it again: each
/// message is handled once, none is dead-lettered.
#[tokio::test]
async fn an_attempt_that_times_out_in_a_running_batch_is_not_run_again_beside_it() {
    struct Slow(Arc<Mutex<Vec<String>>>);
    impl HandleBatch<Order> for Slow {
        type Error = HandlerError;
        async fn handle_batch(
            &self,
            batch: Vec<(Order, Context)>,
        ) -> Vec<Result<(), HandlerError>> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut runs = self.0.lock().unwrap();
            batch
                .iter()
                .map(|(o, _)| {
                    runs.push(o.order_id.clone());
                    Ok(())
                })
                .collect()
        }
    }
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (_broker, summary) = run_batched(
        4,
        Slow(Arc::clone(&runs)),
        4,
        6,
        Some(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (4, 0),
        "{summary}"
    );
    let mut runs = runs.lock().unwrap().clone();
    runs.sort();
    assert_eq!(runs, ["k0", "k1", "k2", "k3"], "each run once");
}
