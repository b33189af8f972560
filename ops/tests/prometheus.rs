//! `/metrics` with the Prometheus recorder installed: durations as
//! histograms with buckets, every series labelled with its consumer, the
//! runner's gauges exported from its start.

use std::sync::Arc;
use std::time::Duration;

use backstop::memory::MemoryBroker;
use backstop::{Message, Runner, StackBuilder, handler_fn};
use backstop_ops::Operations;

#[tokio::test]
async fn metrics_are_labelled_histograms_and_the_gauges_exist_from_the_start() {
    let ops = Operations::with_prometheus().expect("the only recorder of this process");
    let broker = MemoryBroker::new();
    for _ in 0..3 {
        broker
            .publish_now("priced", Message::new(r#""x""#))
            .expect("publish");
    }
    let source = broker.consume("priced", 2);
    let labels = source.metric_labels();
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .metric_labels(labels.clone())
        .build(handler_fn(|_: String, _| async {
            Ok::<_, backstop::HandlerError>(())
        }));
    let runner = Runner::new(source, stack).metric_labels(labels);
    ops.watch("priced", runner.health());
    let token = runner.shutdown_token();
    let server = ops
        .bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let run = tokio::spawn(runner.run());
    let addr = server.local_addr();
    let consumer = r#"source="priced",group="priced""#;
    let wanted = [
        format!(r#"backstop_messages_total{{{consumer},outcome="handled"}} 3"#),
        format!(
            r#"backstop_handler_duration_seconds_bucket{{{consumer},outcome="handled",le="0.001"}}"#
        ),
        format!("backstop_ready{{{consumer}}} 1"),
        format!("backstop_runner_halted{{{consumer}}} 0"),
        format!("backstop_breaker_state{{{consumer}}} 0"),
        format!("backstop_in_flight{{{consumer}}} 0"),
    ];
    let mut page = String::new();
    for _ in 0..50 {
        let (status, body) = backstop_tests::scrape::get(addr, "/metrics")
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200);
        page = body;
        if wanted.iter().all(|w| page.contains(w.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &wanted {
        assert!(page.contains(w.as_str()), "{w} missing from:\n{page}");
    }
    assert!(page.contains("# TYPE backstop_handler_duration_seconds histogram"));
    token.cancel();
    run.await.expect("join").expect("run");
    server.shutdown().await;
}
