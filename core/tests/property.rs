//! Property: for random schedules of successes, transient and permanent
//! failures, duplicates and consumer drops on the in-memory broker, every
//! message ends handled-and-acked or in the DLQ; none is lost; a handler
//! succeeds twice only after a consumer drop; in-flight never exceeds the bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::idempotency::MemoryStore;
use backstop::memory::MemoryBroker;
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, RetryPolicy, Runner,
    StackBuilder, handler_fn,
};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Transient,
    Permanent,
    /// Hangs in the first consumer generation, which is then dropped.
    Hang,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![4 => Just(Step::Ok), 3 => Just(Step::Transient), 1 => Just(Step::Permanent), 1 => Just(Step::Hang)]
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct World {
    runs: HashMap<String, usize>,
    successes: HashMap<String, usize>,
}

async fn scenario(schedules: Vec<(Vec<Step>, bool)>, concurrency: usize) {
    let broker = MemoryBroker::new();
    for (i, (_, twice)) in schedules.iter().enumerate() {
        let m = Message::new(format!("{i}")).with_message_id(format!("m{i}"));
        broker.publish_now("q", m.clone()).unwrap();
        if *twice {
            broker.publish_now("q", m).unwrap();
        }
    }
    let schedules = Arc::new(schedules);
    let world = Arc::new(Mutex::new(World::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(MemoryStore::default());
    let mut drops = 0;
    for generation in 0..2 {
        let (schedules, world, in_flight, peak) = (
            schedules.clone(),
            world.clone(),
            in_flight.clone(),
            peak.clone(),
        );
        let handler = handler_fn(move |body: String, ctx: Context| {
            let (schedules, world, in_flight, peak) = (
                schedules.clone(),
                world.clone(),
                in_flight.clone(),
                peak.clone(),
            );
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Decrements on return and when an abandoned run is dropped.
                let _guard = InFlight(in_flight.clone());
                let i: usize = body.parse().unwrap();
                let id = ctx.message_id().to_owned();
                let run = {
                    let mut w = world.lock().unwrap();
                    let r = w.runs.entry(id.clone()).or_default();
                    *r += 1;
                    *r - 1
                };
                let steps = &schedules[i].0;
                let step = steps[run.min(steps.len() - 1)];
                let result = match step {
                    Step::Hang if generation == 0 => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(())
                    }
                    Step::Ok | Step::Hang => Ok(()),
                    Step::Transient => Err(HandlerError::transient("flaky")),
                    Step::Permanent => Err(HandlerError::permanent("invalid")),
                };
                if result.is_ok() {
                    *world.lock().unwrap().successes.entry(id).or_default() += 1;
                }
                result
            }
        });
        let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
            .retry(
                RetryPolicy::retries(2)
                    .backoff(Duration::from_micros(100), Duration::from_millis(1)),
            )
            .idempotency(store.clone(), KeySource::MessageId)
            .nack_delay(Duration::from_millis(1))
            .build(handler);
        let source = broker.consume("q", concurrency);
        if generation == 0 {
            let stop = CancellationToken::new();
            let runner = tokio::spawn(
                Runner::new(source, stack)
                    .concurrency(concurrency)
                    .shutdown_deadline(Duration::from_millis(20))
                    .with_shutdown(stop.clone())
                    .run(),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
            let summary = runner.await.unwrap().unwrap();
            drops += summary.abandoned;
        } else {
            Runner::new(source.until_drained(), stack)
                .concurrency(concurrency)
                .run()
                .await
                .unwrap();
        }
    }
    assert!(
        peak.load(Ordering::SeqCst) <= concurrency,
        "in-flight exceeded the bound"
    );
    let stats = broker.stats("q");
    assert_eq!(
        (stats.ready, stats.unacked, stats.delayed),
        (0, 0, 0),
        "nothing left behind"
    );
    let dead: Vec<String> = broker
        .peek("q.dlq")
        .iter()
        .map(|m| m.meta.message_id.clone())
        .collect();
    let w = world.lock().unwrap();
    for i in 0..schedules.len() {
        let id = format!("m{i}");
        let ok = w.successes.get(&id).copied().unwrap_or(0);
        let dlq = dead.iter().filter(|d| **d == id).count();
        assert!(
            ok >= 1 || dlq >= 1,
            "{id} lost: no success and not dead-lettered"
        );
        assert!(
            ok <= 1 || drops > 0,
            "{id} succeeded {ok} times without a consumer drop"
        );
        assert!(dlq <= 1 || drops > 0, "{id} dead-lettered {dlq} times");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn nothing_is_lost(
        schedules in prop::collection::vec((prop::collection::vec(step(), 1..5), any::<bool>()), 1..30),
        concurrency in 1usize..6,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(scenario(schedules, concurrency));
    }
}
