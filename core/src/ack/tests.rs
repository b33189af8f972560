use std::sync::{Arc, Mutex};

use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::{Acker, Message};

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
            kind: crate::ErrorKind::Decode,
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
