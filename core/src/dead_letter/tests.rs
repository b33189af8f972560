//! The dead-letter layer: what a letter carries and when a message is
//! dead-lettered.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::error::{ErrorKind, Failure};
use crate::testing::{RecordingSink, request};
use crate::wire;

fn failing(
    kind: ErrorKind,
) -> impl Service<Request<String>, Response = Outcome, Error = Error, Future: Send> + Clone {
    service_fn(move |_r: Request<String>| async move {
        Err(Error::Failed(Failure {
            kind,
            message: "bad order".into(),
            attempts: 3,
            first_failure: SystemTime::now(),
            last_failure: SystemTime::now(),
        }))
    })
}

#[tokio::test]
async fn failure_is_written_with_headers_and_yields_dead_lettered() {
    let sink = RecordingSink::default();
    let svc = DeadLetterLayer::new(Arc::new(sink.clone()))
        .to("orders.custom-dlq")
        .layer(failing(ErrorKind::Permanent));
    let outcome = svc.oneshot(request("x")).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::DeadLettered {
            kind: ErrorKind::Permanent
        }
    );
    let taken = sink.taken();
    assert_eq!(taken.len(), 1);
    let (letter, dest, _) = &taken[0];
    assert_eq!(dest.as_deref(), Some("orders.custom-dlq"));
    assert_eq!(letter.payload, "x");
    assert_eq!(letter.header(wire::ERROR_KIND), Some("permanent"));
    assert_eq!(letter.header(wire::ERROR), Some("bad order"));
    assert_eq!(letter.header(wire::ATTEMPT), Some("3"));
    assert_eq!(letter.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(letter.header(wire::MESSAGE_ID), Some("id-x"));
    assert!(letter.header(wire::FIRST_FAILURE).is_some());
    assert!(letter.header(wire::LAST_FAILURE).is_some());
}

#[tokio::test]
async fn unconfirmed_write_is_an_error_so_the_source_stays_unacked() {
    let sink = RecordingSink::default();
    sink.failing.store(true, Ordering::SeqCst);
    let svc = DeadLetterLayer::new(Arc::new(sink.clone())).layer(failing(ErrorKind::Decode));
    let err = svc.oneshot(request("x")).await.unwrap_err();
    assert!(matches!(&err, Error::DeadLetter { failure, .. } if failure.attempts == 3));
    assert!(sink.taken().is_empty());
}

#[tokio::test]
async fn without_a_store_a_redelivery_in_this_process_writes_only_the_letter() {
    let sink = RecordingSink::default();
    sink.failing.store(true, Ordering::SeqCst);
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let svc = DeadLetterLayer::new(Arc::new(sink.clone())).layer(service_fn(
        move |_r: Request<String>| {
            let kind = if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                ErrorKind::Timeout
            } else {
                ErrorKind::Panic
            };
            failing(kind).oneshot(request("x"))
        },
    ));
    assert!(svc.clone().oneshot(request("x")).await.is_err());
    sink.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        svc.oneshot(request("x")).await.unwrap(),
        Outcome::DeadLettered {
            kind: ErrorKind::Timeout
        }
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(sink.taken()[0].0.header(wire::ERROR_KIND), Some("timeout"));
}

#[tokio::test]
async fn outcomes_and_other_errors_pass_through() {
    let sink = RecordingSink::default();
    let ok = DeadLetterLayer::new(Arc::new(sink.clone())).layer(service_fn(
        |_r: Request<String>| async { Ok::<_, Error>(Outcome::Handled) },
    ));
    assert_eq!(ok.oneshot(request("x")).await.unwrap(), Outcome::Handled);
    let busy = DeadLetterLayer::new(Arc::new(sink.clone())).layer(service_fn(
        |_r: Request<String>| async { Err::<Outcome, _>(Error::Busy { key: "k".into() }) },
    ));
    assert!(matches!(
        busy.oneshot(request("x")).await,
        Err(Error::Busy { .. })
    ));
    assert!(sink.taken().is_empty());
}
