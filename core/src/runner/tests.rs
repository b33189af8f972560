//! The runner: its start-up check, a panic outside the handler, readiness,
//! and the breaker's pause and probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tower::service_fn;

use super::*;

/// A source with no deliveries whose start-up check fails `unreachable`
/// times as unreachable, then reports `missing` (if any) or passes.
struct Checked {
    unreachable: u32,
    missing: Option<&'static str>,
    checks: Arc<AtomicU32>,
}

impl Source for Checked {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        if n < self.unreachable {
            return Err(SourceError::Disconnected("broker away".into()));
        }
        match self.missing {
            Some(name) => Err(SourceError::Fatal(Box::new(MissingDestinations {
                source_name: "q".into(),
                missing: vec![name.into()],
                how: "declare it".into(),
            }))),
            None => Ok(()),
        }
    }

    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_service_whose_call_panics_fails_that_message_alone() {
    let broker = crate::memory::MemoryBroker::new();
    for body in ["fine", "boom", "also fine"] {
        broker
            .publish_now(
                "q",
                crate::message::Message::new(body).with_message_id(body),
            )
            .unwrap();
    }
    // `service_fn` runs its closure in `call`: it panics on the first
    // delivery of `boom` (a layer composed by hand that works in
    // `call`), and acks the rest.
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (p, a) = (Arc::clone(&panicked), Arc::clone(&acked));
    let service = service_fn(move |delivery: Delivery| {
        let body = String::from_utf8_lossy(&delivery.message().payload).into_owned();
        if body == "boom" && !p.swap(true, Ordering::SeqCst) {
            panic!("a bug in call");
        }
        let acked = Arc::clone(&a);
        async move {
            let (_message, acker, _token) = delivery.into_parts();
            acker.ack().await?;
            acked.lock().unwrap().push(body);
            Ok::<_, AckError>(Settled::Acked(crate::outcome::Outcome::Handled))
        }
    });
    let summary = Runner::new(broker.consume("q", 4).until_drained(), service)
        .concurrency(4)
        .run()
        .await
        .expect("the runner goes on after a call panics");
    assert!(panicked.load(Ordering::SeqCst));
    assert_eq!(summary.ack_failed, 1, "{summary:?}");
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    assert_eq!(
        acked,
        ["also fine", "boom", "fine"],
        "the message whose call panicked was redelivered and acked"
    );
}

fn service()
-> impl Service<Delivery, Response = Settled, Error = AckError, Future: Send> + Clone + Send + 'static
{
    service_fn(|_d: Delivery| async {
        Ok::<_, AckError>(Settled::Acked(crate::outcome::Outcome::Handled))
    })
}

#[tokio::test(start_paused = true)]
async fn a_missing_destination_stops_the_run_at_start_and_is_not_ready() {
    let checks = Arc::new(AtomicU32::new(0));
    let source = Checked {
        unreachable: 0,
        missing: Some("q.dlq"),
        checks: Arc::clone(&checks),
    };
    let runner = Runner::new(source, service());
    let readiness = runner.readiness();
    assert_eq!(readiness.get(), Err("starting".to_owned()));
    let Err(RunError::Source { source, .. }) = runner.run().await else {
        panic!("a missing DLQ must stop the run");
    };
    assert!(source.to_string().contains("\"q.dlq\""), "{source}");
    assert!(readiness.get().is_err_and(|why| why.contains("q.dlq")));
    assert_eq!(checks.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_broker_is_retried_not_ready_then_ready() {
    let checks = Arc::new(AtomicU32::new(0));
    let source = Checked {
        unreachable: 3,
        missing: None,
        checks: Arc::clone(&checks),
    };
    let runner = Runner::new(source, service());
    let readiness = runner.readiness();
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        readiness
            .get()
            .is_err_and(|why| why.contains("broker away"))
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(checks.load(Ordering::SeqCst), 4, "retried with backoff");
    assert!(readiness.is_ready());
    token.cancel();
    assert!(
        run.await.unwrap().is_ok(),
        "the worker never exits for an outage"
    );
    assert_eq!(readiness.get(), Err("stopped".to_owned()));
}

/// A source that reports its own connection: a message it still had
/// buffered when the broker went away does not make the runner ready,
/// and its reconnect does, with nothing to deliver. Without
/// `reported_by_source` the runner would infer "connected" from the
/// buffered delivery.
#[tokio::test(start_paused = true)]
async fn a_source_reporting_its_connection_alone_decides_that_part() {
    struct Reporting {
        readiness: Option<Readiness>,
        steps: std::collections::VecDeque<Option<Result<Delivery, SourceError>>>,
    }
    impl Source for Reporting {
        fn attach(&mut self, health: &Health) {
            health.readiness().reported_by_source();
            self.readiness = Some(health.readiness().clone());
        }
        async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
            match self.steps.pop_front() {
                Some(step) => step,
                None => std::future::pending().await,
            }
        }
    }
    let broker = crate::memory::MemoryBroker::new();
    broker
        .publish_now("q", crate::message::Message::new(r#""x""#))
        .unwrap();
    let mut buffered = broker.consume("q", 1);
    let delivery = buffered.next().await.unwrap().unwrap();
    let source = Reporting {
        readiness: None,
        steps: [
            Some(Err(SourceError::Disconnected("broker away".into()))),
            Some(Ok(delivery)),
        ]
        .into(),
    };
    let runner = Runner::new(source, service());
    let readiness = runner.readiness();
    let token = runner.shutdown_token();
    // The source says it lost the broker before the runner takes anything.
    readiness.disconnected("the consumer is reconnecting");
    let run = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        readiness.get(),
        Err("the consumer is reconnecting".to_owned()),
        "a buffered delivery is no sign the broker is back"
    );
    readiness.connected();
    assert!(readiness.is_ready(), "the source's reconnect alone");
    token.cancel();
    assert!(run.await.unwrap().is_ok());
}

/// The half-open probe holds back fetching until *it* settled, not until
/// every older message did: a slow message in flight neither blocks
/// recovery nor outlives shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_probe_fetching_resumes_beside_a_slow_message() {
    use std::sync::atomic::AtomicBool;

    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::context::Context;
    use crate::error::HandlerError;
    use crate::handler::handler_fn;
    use crate::memory::MemoryBroker;
    use crate::message::Message;
    use crate::stack::StackBuilder;

    let broker = MemoryBroker::new();
    broker
        .publish_now("q", Message::new("{}").with_message_id("slow"))
        .unwrap();
    for i in 0..6 {
        broker
            .publish_now("q", Message::new("{}").with_message_id(format!("m{i}")))
            .unwrap();
    }
    let down = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(AtomicU32::new(0));
    let (d, h) = (Arc::clone(&down), Arc::clone(&handled));
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .nack_delay(Duration::from_millis(20))
        .build(handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let (d, h) = (Arc::clone(&d), Arc::clone(&h));
            async move {
                if ctx.message_id() == "slow" {
                    // Runs until shutdown.
                    ctx.cancellation().cancelled().await;
                } else if d.load(Ordering::SeqCst) {
                    return Err(HandlerError::unavailable("down"));
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }));
    let runner = Runner::new(broker.consume("q", 4), stack)
        .concurrency(4)
        .shutdown_deadline(Duration::from_secs(5))
        .with_breaker(BreakerConfig::new(3, Duration::from_millis(200)));
    let (breaker, token) = (runner.breaker(), runner.shutdown_token());
    let run = tokio::spawn(runner.run());
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while breaker.trips() == 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(breaker.trips(), 1, "three outages trip it");
    down.store(false, Ordering::SeqCst);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 6 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        6,
        "every other message ran while the slow one is still in flight"
    );
    assert_eq!(breaker.state(), BreakerState::Closed);
    token.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends on shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(summary.handled, 7, "{summary}");
}

#[tokio::test(start_paused = true)]
async fn a_message_that_arrives_with_a_pause_is_not_run_until_resumed() {
    use crate::context::Context;
    use crate::handler::handler_fn;
    use crate::memory::MemoryBroker;
    use crate::message::Message;
    use crate::stack::StackBuilder;

    let broker = MemoryBroker::new();
    let handled = Arc::new(AtomicU32::new(0));
    let h = Arc::clone(&handled);
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .nack_delay(Duration::from_millis(10))
        .build(handler_fn(move |_v: serde_json::Value, _ctx: Context| {
            let h = Arc::clone(&h);
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, crate::error::HandlerError>(())
            }
        }));
    let runner = Runner::new(broker.consume("q", 4), stack);
    let (breaker, token) = (runner.breaker(), runner.shutdown_token());
    let run = tokio::spawn(runner.run());
    // The runner waits on its empty source.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A pause and a message before the runner is polled again: both are
    // ready when it wakes.
    breaker.pause();
    broker
        .publish_now("q", Message::new("{}").with_message_id("m1"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "nothing runs while paused, not even what arrived with the pause"
    );
    breaker.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "it ran once resumed");
    token.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.handled, 1, "{summary}");
    assert_eq!(broker.stats("q").ready + broker.stats("q").unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_stops_fetching_then_probes_one_message_at_a_time() {
    use std::sync::atomic::AtomicBool;

    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::context::Context;
    use crate::error::HandlerError;
    use crate::handler::handler_fn;
    use crate::memory::MemoryBroker;
    use crate::message::Message;
    use crate::stack::StackBuilder;

    let broker = MemoryBroker::new();
    for i in 0..10 {
        broker
            .publish_now("q", Message::new("{}").with_message_id(format!("m{i}")))
            .unwrap();
    }
    let down = Arc::new(AtomicBool::new(true));
    let (calls, handled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (d, c, h) = (Arc::clone(&down), Arc::clone(&calls), Arc::clone(&handled));
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(broker.dead_letter_sink()))
        .nack_delay(Duration::from_millis(100))
        .build(handler_fn(move |_v: serde_json::Value, _ctx: Context| {
            let (d, c, h) = (Arc::clone(&d), Arc::clone(&c), Arc::clone(&h));
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return Err(HandlerError::unavailable("down"));
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }));
    let runner = Runner::new(broker.consume("q", 1), stack)
        .with_breaker(BreakerConfig::new(3, Duration::from_secs(1)));
    let (breaker, readiness, token) = (
        runner.breaker(),
        runner.readiness(),
        runner.shutdown_token(),
    );
    let run = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "tripped by exactly 3 outages"
    );
    assert!(readiness.get().is_err_and(|why| why.contains("open")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "nothing fetched while open"
    );
    let mut waited = Duration::ZERO;
    while calls.load(Ordering::SeqCst) == 3 && waited < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "one probe after the cool-down"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "the failed probe reopened it"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one message at a time");
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(readiness.is_ready());
    assert_eq!(
        handled.load(Ordering::SeqCst),
        10,
        "every message ran once it recovered"
    );
    breaker.pause();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(readiness.get().is_err_and(|why| why.contains("paused")));
    breaker.resume();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(readiness.is_ready());
    token.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.handled, 10, "{summary}");
    assert_eq!(summary.dead_lettered, 0, "{summary}");
}

/// A service that acks each delivery (once its cancellation fires, with
/// `after_cancel`), and the count of deliveries it acked.
fn acking(
    after_cancel: bool,
) -> (
    Arc<AtomicU32>,
    impl Service<Delivery, Response = Settled, Error = AckError, Future: Send + 'static>
    + Send
    + 'static,
) {
    let acked = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&acked);
    let service = service_fn(move |delivery: Delivery| {
        let count = Arc::clone(&count);
        async move {
            let (_m, acker, cancel) = delivery.into_parts();
            if after_cancel {
                cancel.cancelled().await;
            }
            acker.ack().await?;
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, AckError>(Settled::Acked(crate::outcome::Outcome::Handled))
        }
    });
    (acked, service)
}

/// Shutdown and a new delivery become ready in the same wake while the
/// driver waits for the source: shutdown wins, nothing is taken (the
/// driver's wait polls its shutdown waiter before the source).
#[tokio::test]
async fn a_delivery_arriving_with_shutdown_is_not_taken() {
    let broker = crate::memory::MemoryBroker::new();
    let (handled, service) = acking(false);
    let runner = Runner::new(broker.consume("q", 4), service);
    let token = runner.shutdown_token();
    let run = tokio::spawn(runner.run());
    // Let the driver park in its wait for the (empty) source.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    // Both in the same turn of this task, before the driver runs again.
    token.cancel();
    broker
        .publish_now(
            "q",
            crate::message::Message::new("late").with_message_id("late"),
        )
        .unwrap();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.received, 0, "taken after shutdown: {summary:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

/// A source that hands out one delivery of the in-memory broker's queue
/// `q`, then waits; counts its pauses.
struct Pausing {
    inner: crate::memory::MemorySource,
    handed: bool,
    pauses: Arc<AtomicU32>,
}

impl Source for Pausing {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        if std::mem::replace(&mut self.handed, true) {
            return std::future::pending().await;
        }
        self.inner.next().await
    }

    async fn pause(&mut self) -> Vec<Delivery> {
        self.pauses.fetch_add(1, Ordering::SeqCst);
        Vec::new()
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

/// Shutdown, a pause and the end of the message in flight, all in one wake
/// of the driver while it waits with its one slot taken: it stops, without
/// pausing the source (or calling anything) after shutdown.
#[tokio::test]
async fn shutdown_together_with_a_breaker_change_stops_without_acting_on_the_change() {
    let broker = crate::memory::MemoryBroker::new();
    broker
        .publish_now("q", crate::message::Message::new("m").with_message_id("m"))
        .unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let service = service_fn(move |delivery: Delivery| {
        let released = Arc::clone(&released);
        async move {
            if let Some(released) = released.lock().await.take() {
                let _ = released.await;
            }
            let (_m, acker, _t) = delivery.into_parts();
            acker.ack().await?;
            Ok::<_, AckError>(Settled::Acked(crate::outcome::Outcome::Handled))
        }
    });
    let pauses = Arc::new(AtomicU32::new(0));
    let source = Pausing {
        inner: broker.consume("q", 1),
        handed: false,
        pauses: Arc::clone(&pauses),
    };
    let runner = Runner::new(source, service).concurrency(1);
    let (breaker, token) = (runner.breaker(), runner.shutdown_token());
    let run = tokio::spawn(runner.run());
    // Let the driver take the message and park with its one slot taken.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    // All three in the same turn of this task, before the driver runs again.
    breaker.pause();
    token.cancel();
    release.send(()).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.received, 1, "{summary:?}");
    assert_eq!(summary.handled, 1, "the message in flight finished");
    assert_eq!(pauses.load(Ordering::SeqCst), 0, "no pause after shutdown");
}

/// Runners given one token stop together, and a delivery of one sees the
/// token's cancellation when another runner stops (each runner asks a
/// child of the token of its own: it is cancelled with the token).
#[tokio::test]
async fn runners_sharing_a_token_stop_together_and_their_deliveries_see_it() {
    let token = CancellationToken::new();
    let broker = crate::memory::MemoryBroker::new();
    broker
        .publish_now(
            "q",
            crate::message::Message::new("waits").with_message_id("waits"),
        )
        .unwrap();
    let (saw_cancel, waits) = acking(true);
    let waiting = tokio::spawn(
        Runner::new(broker.consume("q", 4), waits)
            .with_shutdown(token.clone())
            .run(),
    );
    for _ in 0..200 {
        if broker.stats("q").unacked == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        broker.stats("q").unacked,
        1,
        "the delivery is being handled"
    );
    // A second runner whose source fails its start-up check stops, and
    // cancels the shared token as it does.
    let (_, never) = acking(false);
    let failing = Runner::new(
        Checked {
            unreachable: 0,
            missing: Some("q.dlq"),
            checks: Arc::new(AtomicU32::new(0)),
        },
        never,
    )
    .with_shutdown(token.clone())
    .run()
    .await;
    assert!(failing.is_err(), "its source cannot start");
    assert!(token.is_cancelled(), "a stopping runner cancels its token");
    // A runner that ran and stopped (its source drained) cancels it too,
    // the token it was given, not only its own run's child.
    let shared = CancellationToken::new();
    let (_, never) = acking(false);
    let drained = Runner::new(broker.consume("empty", 1).until_drained(), never)
        .with_shutdown(shared.clone())
        .run()
        .await;
    assert!(drained.is_ok(), "{drained:?}");
    assert!(shared.is_cancelled(), "a runner that ran cancels its token");
    let summary = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the first runner stops with the token")
        .unwrap()
        .unwrap();
    assert_eq!(
        saw_cancel.load(Ordering::SeqCst),
        1,
        "its delivery saw the shutdown"
    );
    assert_eq!(summary.handled, 1, "{summary:?}");
    assert_eq!(broker.stats("q").acked, 1);
}
