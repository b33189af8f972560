//! Redis stops mid-run: messages are deferred (nacked, redelivered), never
//! dead-lettered, and each runs exactly once after Redis is back (the shared
//! scenario `backstop_testkit::store_outage`).
//!
//! This binary stops the shared Redis server, so it holds the only test of
//! its binary; cargo runs test binaries one after another, so the crate's
//! other tests never see the outage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop_redis::{RedisConfig, RedisStore};
use backstop_testkit::store_outage::{Outage, requeues_and_runs_each_message_once};

fn url() -> String {
    std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn service(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/redis.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .expect("run the redis service script");
    assert!(status.success(), "redis.sh {action} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_defers_messages_and_each_runs_once_after_restart() {
    let prefix = format!(
        "backstop-test:outage:{}:",
        backstop::message::new_message_id()
    );
    let store = RedisStore::connect_with(
        RedisConfig::new(url())
            .prefix(prefix)
            .operation_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("Redis runs (scripts/services/redis.sh)");
    // The test server runs without persistence: keys written before the stop are gone after it.
    let outage = Outage {
        stop: || service("stop"),
        start: || service("start"),
        durable: false,
    };
    let summary = requeues_and_runs_each_message_once(Arc::new(store), outage)
        .await
        .expect("the store outage scenario holds");
    assert_eq!(summary.duplicates, 10);
}
