//! `backstop spool refused`: lists what a publisher's spool set aside, while
//! the publisher still holds the spool.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backstop::publish::{PublishError, Publisher};
use backstop::{Message, RetryPolicy};
use backstop_spool::{Budget, RelayConfig, ReliablePublisher, SpoolConfig};
use common::*;

/// Down until switched up; then refuses anything over 1 KB as too large.
#[derive(Clone, Default)]
struct Picky {
    up: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Publisher for Picky {
    async fn publish(&self, _: &str, message: &Message) -> Result<(), PublishError> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(PublishError::Unavailable("connection refused".into()));
        }
        if message.payload.len() > 1_024 {
            return Err(PublishError::TooLarge {
                size: message.payload.len(),
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_the_records_the_broker_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.spool");
    let broker = Picky::default();
    let publisher = ReliablePublisher::builder(broker.clone(), SpoolConfig::new(&path))
        .budget(Budget::new(
            RetryPolicy::retries(0),
            Duration::from_millis(200),
        ))
        .relay(
            RelayConfig::default()
                .backoff(Duration::from_millis(20), Duration::from_millis(100))
                .idle_poll(Duration::from_millis(50)),
        )
        .open()
        .await
        .unwrap();
    let big = Message::new(vec![b'x'; 4_096]).with_message_id("big-order\u{1b}[31m");
    assert!(
        publisher
            .publish("orders", &big)
            .await
            .unwrap()
            .is_spooled()
    );
    broker.up.store(true, Ordering::Relaxed);
    publisher.flush(Duration::from_secs(10)).await.unwrap();

    let p = path.to_str().unwrap();
    let table = cli_ok(&["spool", "refused", "--path", p]);
    assert!(table.contains("big-order"), "{table}");
    assert!(table.contains("too_large"), "{table}");
    assert!(
        !table.contains('\u{1b}'),
        "control characters are not printed"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&["spool", "refused", "--path", p, "--json"])).unwrap();
    assert_eq!(json[0]["destination"], "orders");
    assert_eq!(json[0]["reason"], "too_large");
    assert_eq!(json[0]["size"].as_u64().map(|s| s > 4_096), Some(true));
    publisher.close().await.unwrap();

    let missing = cli(&["spool", "refused", "--path", "/nonexistent/x.spool"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("x.spool"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
