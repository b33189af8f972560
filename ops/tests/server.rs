//! The operations server over runners on the in-memory broker: liveness
//! fails only for a loop that stopped turning, readiness follows the
//! runner, unknown paths answer 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::memory::MemoryBroker;
use backstop::{Message, Runner, StackBuilder, handler_fn};
use backstop_ops::{Operations, Server};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    backstop_tests::scrape::get(addr, path)
        .await
        .unwrap_or_else(|| panic!("GET {path}: no answer"))
}

async fn until(addr: SocketAddr, path: &str, status: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "{path} did not answer {status} within {within:?}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve(ops: &Operations) -> Server {
    ops.bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind")
}

/// A handler that blocks its thread (no `.await`) stops the driver loop
/// turning: `/healthz` names it; once it returns, the loop is live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_blocked_by_its_handler_fails_liveness_until_it_turns_again() {
    let broker = MemoryBroker::new();
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink())).build(handler_fn(
        |_: String, _| async {
            std::thread::sleep(Duration::from_secs(3));
            Ok::<_, backstop::HandlerError>(())
        },
    ));
    let runner = Runner::new(broker.consume("blocking", 1), stack);
    let ops = Operations::new().stuck_after(Duration::from_secs(1));
    ops.watch("blocking", runner.health());
    let token = runner.shutdown_token();
    let server = serve(&ops).await;
    let addr = server.local_addr();
    let run = tokio::spawn(runner.run());
    until(addr, "/readyz", 200, Duration::from_secs(5)).await;
    assert_eq!(get(addr, "/healthz").await.0, 200);

    broker
        .publish_now("blocking", Message::new(r#""x""#))
        .expect("publish");
    let body = until(addr, "/healthz", 503, Duration::from_secs(3)).await;
    assert!(
        body.starts_with("blocking: stuck: the driver loop of") && body.contains("has not turned"),
        "{body}"
    );
    // The handler returns after 3 s; the loop turns again.
    until(addr, "/healthz", 200, Duration::from_secs(5)).await;
    assert_eq!(broker.stats("blocking").ready, 0);

    token.cancel();
    let summary = run.await.expect("join").expect("run");
    assert_eq!(summary.handled, 1);
    // A runner that stopped is not stuck, and not ready.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "blocking: not ready: stopped\n")
    );
    server.shutdown().await;
}

/// An idle runner, and a paused one, stay live; paused is not ready.
/// Without a recorder `/metrics` is 404, like any unknown path.
#[tokio::test]
async fn idle_and_paused_runners_stay_live_and_paused_is_not_ready() {
    let broker = MemoryBroker::new();
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink())).build(handler_fn(
        |_: String, _| async { Ok::<_, backstop::HandlerError>(()) },
    ));
    let runner = Runner::new(broker.consume("idle", 4), stack);
    let breaker = runner.breaker();
    let ops = Operations::new().stuck_after(Duration::from_millis(1500));
    ops.watch("idle", runner.health());
    let token = runner.shutdown_token();
    let server = serve(&ops).await;
    let addr = server.local_addr();
    let run = tokio::spawn(runner.run());
    until(addr, "/readyz", 200, Duration::from_secs(5)).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            get(addr, "/healthz").await,
            (200, "idle: live\n".to_owned())
        );
    }
    breaker.pause();
    let body = until(addr, "/readyz", 503, Duration::from_secs(2)).await;
    assert!(body.contains("paused"), "{body}");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }
    breaker.resume();
    until(addr, "/readyz", 200, Duration::from_secs(2)).await;
    assert_eq!(get(addr, "/metrics").await.0, 404);
    assert_eq!(get(addr, "/elsewhere").await.0, 404);
    token.cancel();
    run.await.expect("join").expect("run");
    server.shutdown().await;
}
