use std::sync::{Arc, Mutex};

use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::delivery::Acker;
use crate::message::Message;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct TestAcker(Log);

#[async_trait::async_trait]
impl Acker for TestAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        self.0.0.lock().unwrap().push("ack".into());
        Ok(())
    }
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        self.0
            .0
            .lock()
            .unwrap()
            .push(format!("nack requeue={requeue}"));
        Ok(())
    }
}

fn delivery(log: &Log) -> Delivery {
    Delivery::new(Message::new("x"), TestAcker(log.clone()))
}

#[tokio::test(start_paused = true)]
async fn every_outcome_is_acked_once() {
    for outcome in [
        Outcome::Handled,
        Outcome::Duplicate,
        Outcome::DeadLettered {
            kind: crate::error::ErrorKind::Decode,
        },
    ] {
        let log = Log::default();
        let svc = AckLayer::default().layer(service_fn(move |_r: Received| async move {
            Ok::<_, Error>(outcome)
        }));
        let settled = svc.oneshot(delivery(&log)).await.unwrap();
        assert!(matches!(settled, Settled::Acked(o) if o == outcome));
        assert_eq!(log.entries(), ["ack"]);
    }
}

#[tokio::test(start_paused = true)]
async fn errors_are_nacked_with_requeue_after_a_backoff() {
    let log = Log::default();
    let svc = AckLayer::new(Duration::from_secs(2)).layer(service_fn(|_r: Received| async {
        Err::<Outcome, _>(Error::Busy { key: "k".into() })
    }));
    let start = tokio::time::Instant::now();
    let settled = svc.oneshot(delivery(&log)).await.unwrap();
    assert!(matches!(settled, Settled::Nacked(Error::Busy { .. })));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "no hot loop: waited {:?}",
        start.elapsed()
    );
    assert_eq!(log.entries(), ["nack requeue=true"]);
}

#[tokio::test]
async fn dropped_delivery_is_nacked_with_requeue() {
    let log = Log::default();
    drop(delivery(&log));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(log.entries(), ["nack requeue=true"]);
}

#[tokio::test]
async fn dropped_stack_future_nacks_instead_of_acking() {
    let log = Log::default();
    let svc = AckLayer::default().layer(service_fn(|_r: Received| async {
        futures::future::pending::<()>().await;
        Ok::<_, Error>(Outcome::Handled)
    }));
    let task = tokio::spawn(svc.oneshot(delivery(&log)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(log.entries(), ["nack requeue=true"]);
}

/// A delivery the source loses (a revoked partition) cancels its running
/// handler; shutdown still cancels it too.
#[tokio::test]
async fn a_lost_delivery_cancels_its_running_handler() {
    use tokio_util::sync::CancellationToken;
    let log = Log::default();
    let svc = AckLayer::new(Duration::from_millis(1)).layer(service_fn(|r: Received| async move {
        r.cancel.cancelled().await;
        Err::<Outcome, _>(Error::Shutdown)
    }));
    let (shutdown, revoked) = (CancellationToken::new(), CancellationToken::new());
    let run = tokio::spawn(
        svc.clone().oneshot(
            delivery(&log)
                .with_cancellation(shutdown.clone())
                .fenced_by(revoked.clone()),
        ),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!run.is_finished(), "runs until the source loses it");
    revoked.cancel();
    let settled = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the revoke cancelled the handler")
        .unwrap()
        .unwrap();
    assert!(matches!(settled, Settled::Nacked(Error::Shutdown)));
    assert!(!shutdown.is_cancelled(), "only this delivery was cancelled");

    let other = tokio::spawn(
        svc.oneshot(
            delivery(&log)
                .with_cancellation(shutdown.clone())
                .fenced_by(CancellationToken::new()),
        ),
    );
    shutdown.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), other)
            .await
            .is_ok(),
        "shutdown still reaches a fenced delivery's handler"
    );
}

/// A retry sink that records what it was given, or refuses everything.
struct Recording {
    log: Log,
    refuse: bool,
}

#[async_trait::async_trait]
impl crate::retry::RetrySink for Recording {
    async fn retry_later(
        &self,
        copy: Message,
        delay: std::time::Duration,
    ) -> Result<(), crate::error::SinkError> {
        if self.refuse {
            return Err(crate::error::SinkError::Unsupported("classic queue".into()));
        }
        self.log.0.lock().unwrap().push(format!(
            "copy attempt={} header={:?} delay={delay:?}",
            copy.meta.attempt,
            copy.header(crate::wire::ATTEMPT)
        ));
        Ok(())
    }
}

fn postponing(log: &Log, refuse: bool) -> AckLayer {
    AckLayer::new(Duration::from_millis(200)).postpone_through(Arc::new(Recording {
        log: log.clone(),
        refuse,
    }))
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_postponed_through_the_sink_with_the_same_attempt_then_acked() {
    for error in [
        || Error::Unavailable("db down".into()),
        || Error::Store(crate::error::StoreError::Backend("redis down".into())),
        || Error::Busy { key: "k".into() },
    ] {
        let log = Log::default();
        let svc = postponing(&log, false).layer(service_fn(move |_r: Received| async move {
            Err::<Outcome, _>(error())
        }));
        let mut message = Message::new("x");
        message.meta.attempt = 3;
        let d = Delivery::new(message, TestAcker(log.clone()));
        let settled = svc.oneshot(d).await.unwrap();
        assert!(matches!(settled, Settled::Postponed(_)), "{settled:?}");
        assert_eq!(
            log.entries(),
            [
                "copy attempt=3 header=Some(\"3\") delay=200ms".to_owned(),
                "ack".to_owned()
            ],
            "never a requeueing nack, never an attempt counted"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusing_sink_falls_back_to_the_nack_and_a_failure_is_never_postponed() {
    let log = Log::default();
    let svc = postponing(&log, true).layer(service_fn(|_r: Received| async {
        Err::<Outcome, _>(Error::Unavailable("db down".into()))
    }));
    let settled = svc.oneshot(delivery(&log)).await.unwrap();
    assert!(matches!(settled, Settled::Nacked(_)));
    assert_eq!(log.entries(), ["nack requeue=true"]);

    let log = Log::default();
    let svc = postponing(&log, false).layer(service_fn(|_r: Received| async {
        Err::<Outcome, _>(Error::Shutdown)
    }));
    let settled = svc.oneshot(delivery(&log)).await.unwrap();
    assert!(matches!(settled, Settled::Nacked(Error::Shutdown)));
    assert_eq!(log.entries(), ["nack requeue=true"]);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_at_its_deadline_is_postponed_and_a_stuck_run_dropped() {
    let log = Log::default();
    let started = tokio::time::Instant::now();
    // A run that ignores its token and would take an hour.
    let svc = postponing(&log, false).layer(service_fn(|_r: Received| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, Error>(Outcome::Handled)
    }));
    let d = delivery(&log).with_deadline(started + Duration::from_secs(10));
    let settled = svc.oneshot(d).await.unwrap();
    assert!(
        matches!(settled, Settled::Postponed(Error::Shutdown)),
        "{settled:?}"
    );
    assert_eq!(log.entries().last().map(String::as_str), Some("ack"));
    assert!(
        started.elapsed() <= Duration::from_secs(10) + Duration::from_millis(200),
        "settled by the deadline plus the grace, not after the run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_stops_on_its_token_at_the_deadline_is_postponed() {
    let log = Log::default();
    let svc = postponing(&log, false).layer(service_fn(|r: Received| async move {
        r.cancel.cancelled().await;
        Err::<Outcome, _>(Error::Shutdown)
    }));
    let d = delivery(&log).with_deadline(tokio::time::Instant::now() + Duration::from_secs(5));
    let settled = svc.oneshot(d).await.unwrap();
    assert!(matches!(settled, Settled::Postponed(_)));
    assert_eq!(
        log.entries().len(),
        2,
        "a copy, then the ack: {:?}",
        log.entries()
    );
}

#[tokio::test(start_paused = true)]
async fn a_postponed_delivery_is_settled_without_running() {
    let log = Log::default();
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let svc = postponing(&log, false).layer(service_fn(move |_r: Received| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, Error>(Outcome::Handled) }
    }));
    let settled = svc.oneshot(delivery(&log).postponed()).await.unwrap();
    assert!(matches!(settled, Settled::Postponed(_)));
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
}
