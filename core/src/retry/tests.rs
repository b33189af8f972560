use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tower::{Service, ServiceExt};

use super::*;
use crate::error::ErrorKind;
use crate::testing::{RecordingSink, Scripted, request};

fn policy(retries: u32) -> RetryPolicy {
    RetryPolicy::retries(retries).backoff(Duration::from_millis(10), Duration::from_millis(100))
}

async fn run(svc: &mut Retry<Scripted>) -> Result<Outcome, Error> {
    ServiceExt::<Request<String>>::ready(svc)
        .await?
        .call(request("a"))
        .await
}

#[tokio::test(start_paused = true)]
async fn ok_is_handled_after_one_call() {
    let h = Scripted::new(|_| Ok(()));
    let mut svc = Retry::new(h.clone(), policy(3), None);
    assert_eq!(run(&mut svc).await.unwrap(), Outcome::Handled);
    assert_eq!(h.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_until_success() {
    let h = Scripted::new(|n| {
        if n <= 2 {
            Err(HandlerError::transient("busy"))
        } else {
            Ok(())
        }
    });
    let mut svc = Retry::new(h.clone(), policy(3), None);
    assert_eq!(run(&mut svc).await.unwrap(), Outcome::Handled);
    assert_eq!(h.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_is_not_retried() {
    let h = Scripted::new(|_| Err(HandlerError::permanent("invalid")));
    let mut svc = Retry::new(h.clone(), policy(3), None);
    let Err(Error::Failed(f)) = run(&mut svc).await else {
        panic!("expected failure")
    };
    assert_eq!(f.kind, ErrorKind::Permanent);
    assert_eq!(f.attempts, 1);
    assert!(f.message.contains("invalid"));
    assert_eq!(h.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_fail_with_kind_exhausted() {
    let h = Scripted::new(|_| Err(HandlerError::transient("busy")));
    let mut svc = Retry::new(h.clone(), policy(2), None);
    let Err(Error::Failed(f)) = run(&mut svc).await else {
        panic!("expected failure")
    };
    assert_eq!(f.kind, ErrorKind::Exhausted);
    assert_eq!(f.attempts, 3, "retries = 2 means 3 attempts");
    assert_eq!(h.calls(), 3);
    assert!(f.first_failure <= f.last_failure);
}

#[tokio::test(start_paused = true)]
async fn timeouts_that_exhaust_keep_kind_timeout() {
    let h = Scripted::new(|_| Err(HandlerError::timeout("slow")));
    let mut svc = Retry::new(h.clone(), policy(1), None);
    let Err(Error::Failed(f)) = run(&mut svc).await else {
        panic!("expected failure")
    };
    assert_eq!(f.kind, ErrorKind::Timeout);
    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let h = Scripted::new(|n| {
        if n == 1 {
            Err(HandlerError::transient("rate limited").retry_after(Duration::from_secs(5)))
        } else {
            Ok(())
        }
    });
    let p = policy(3).in_process_limit(Duration::from_secs(60));
    let mut svc = Retry::new(h.clone(), p, None);
    let start = tokio::time::Instant::now();
    assert_eq!(run(&mut svc).await.unwrap(), Outcome::Handled);
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn long_delay_goes_to_the_sink_and_defers() {
    let h =
        Scripted::new(
            |_| Err(HandlerError::transient("down").retry_after(Duration::from_secs(30))),
        );
    let sink = RecordingSink::default();
    let mut svc = Retry::new(h.clone(), policy(3), Some(Arc::new(sink.clone())));
    let outcome = run(&mut svc).await.unwrap();
    assert!(matches!(outcome, Outcome::Deferred { attempt: 2, .. }));
    assert_eq!(h.calls(), 1, "the worker does not sleep on a long delay");
    let taken = sink.taken();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].0.header(wire::ATTEMPT), Some("2"));
    assert_eq!(taken[0].0.header(wire::ORIGINAL_SOURCE), Some("orders"));
    assert_eq!(taken[0].2, Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_is_capped_not_a_panic() {
    // 9,500 years: past what the wire's RFC 3339 times can write.
    let h = Scripted::new(|_| {
        Err(HandlerError::transient("come back later")
            .retry_after(Duration::from_secs(300_000_000_000)))
    });
    let sink = RecordingSink::default();
    let mut svc = Retry::new(h, policy(3), Some(Arc::new(sink.clone())));
    let outcome = run(&mut svc).await.unwrap();
    assert!(matches!(outcome, Outcome::Deferred { attempt: 2, .. }));
    let taken = sink.taken();
    assert_eq!(taken[0].2, Some(crate::retry::MAX_RETRY_AFTER));
    let due = wire::parse_time(taken[0].0.header(wire::DUE).unwrap()).unwrap();
    let ahead = due.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(ahead <= crate::retry::MAX_RETRY_AFTER + Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn unconfirmed_republish_is_an_error_not_an_outcome() {
    let h =
        Scripted::new(
            |_| Err(HandlerError::transient("down").retry_after(Duration::from_secs(30))),
        );
    let sink = RecordingSink::default();
    sink.failing.store(true, Ordering::SeqCst);
    let mut svc = Retry::new(h, policy(3), Some(Arc::new(sink)));
    assert!(matches!(
        run(&mut svc).await,
        Err(Error::Retry { attempts: 1, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_retrying() {
    let h =
        Scripted::new(|_| Err(HandlerError::transient("busy").retry_after(Duration::from_secs(2))));
    let p = policy(100)
        .max_elapsed(Duration::from_secs(5))
        .in_process_limit(Duration::from_secs(60));
    let mut svc = Retry::new(h.clone(), p, None);
    let Err(Error::Failed(f)) = run(&mut svc).await else {
        panic!("expected failure")
    };
    assert_eq!(f.kind, ErrorKind::Exhausted);
    assert_eq!(h.calls(), 3, "runs at 0s, 2s, 4s; the next would pass 5s");
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_count_past_the_maximum_is_exhausted_without_running() {
    let h = Scripted::new(|_| Ok(()));
    let mut svc = Retry::new(h.clone(), policy(2), None);
    let mut req = request("a");
    req.confirm_failed_runs(3);
    let Err(Error::Failed(f)) = ServiceExt::<Request<String>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
    else {
        panic!()
    };
    assert_eq!(f.kind, ErrorKind::Exhausted);
    assert_eq!(h.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_forged_attempt_header_never_skips_the_run() {
    let h = Scripted::new(|_| Err(HandlerError::transient("busy")));
    let mut svc = Retry::new(h.clone(), policy(2), None);
    let mut message = crate::message::Message::new("\"a\"").with_header(crate::wire::ATTEMPT, "99");
    message.meta.attempt = crate::attempt::from_headers(&message.headers);
    let req = Request::<String>::decode(message, crate::CancellationToken::new(), None);
    let Err(Error::Failed(f)) = ServiceExt::<Request<String>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
    else {
        panic!()
    };
    assert_eq!(
        h.calls(),
        1,
        "the forged count is believed up to the last attempt"
    );
    assert_eq!(f.attempts, 3);
    assert_eq!(f.kind, ErrorKind::Exhausted);
}

#[tokio::test(start_paused = true)]
async fn unavailable_dependency_defers_without_counting_or_retrying() {
    let h = Scripted::new(|_| Err(HandlerError::unavailable("database down")));
    let mut svc = Retry::new(h.clone(), policy(3), None);
    assert!(matches!(run(&mut svc).await, Err(Error::Unavailable(_))));
    assert_eq!(
        h.calls(),
        1,
        "no in-process retries burn attempts while it is down"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sleep_past_the_deadline_goes_through_the_sink_even_below_the_in_process_limit() {
    let h = Scripted::new(|n| {
        if n == 1 {
            Err(HandlerError::transient("later").retry_after(Duration::from_secs(6)))
        } else {
            Ok(())
        }
    });
    let sink = RecordingSink::default();
    let policy = RetryPolicy {
        in_process_limit: Duration::from_secs(60),
        ..policy(3)
    };
    let mut svc = Retry::new(h.clone(), policy.clone(), Some(Arc::new(sink.clone())));
    let mut req = request("a");
    req.set_deadline(Some(tokio::time::Instant::now() + Duration::from_secs(4)));
    let outcome = ServiceExt::<Request<String>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Deferred { attempt: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(h.calls(), 1, "not slept in process");
    assert_eq!(sink.taken().len(), 1);

    // Without a deadline the same delay is slept in process.
    let h = Scripted::new(|n| {
        if n == 1 {
            Err(HandlerError::transient("later").retry_after(Duration::from_secs(6)))
        } else {
            Ok(())
        }
    });
    let mut svc = Retry::new(h.clone(), policy, Some(Arc::new(RecordingSink::default())));
    assert_eq!(run(&mut svc).await.unwrap(), Outcome::Handled);
    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_in_process_sleep_ends_on_cancellation() {
    let h = Scripted::new(|_| {
        Err(HandlerError::transient("later").retry_after(Duration::from_secs(600)))
    });
    let mut svc = Retry::new(h.clone(), policy(3), None);
    let req = request("a");
    let cancel = req.cancellation().clone();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let result = ServiceExt::<Request<String>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await;
    assert!(matches!(result, Err(Error::Shutdown)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(h.calls(), 1);
}
