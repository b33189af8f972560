//! PostgreSQL stops mid-run: messages are deferred (nacked, redelivered),
//! never dead-lettered, and each runs exactly once after it is back (the
//! shared scenario `backstop_testkit::store_outage`).
//!
//! This binary stops the shared PostgreSQL server, so it holds the only
//! test of its binary; cargo runs test binaries one after another, so the
//! crate's other tests never see the outage.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop_postgres::{PgConfig, PostgresStore};
use backstop_testkit::store_outage::{Outage, requeues_and_runs_each_message_once};

fn service(action: &str) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/postgres.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .expect("run the postgres service script");
    assert!(status.success(), "postgres.sh {action} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_defers_messages_and_each_runs_once_after_restart() {
    let admin = common::admin().await;
    let schema = common::Schema::create(&admin).await;
    let pool = PgConfig::new(common::url())
        .max_connections(4)
        .connect_timeout(Duration::from_secs(2))
        .wait_timeout(Duration::from_secs(2))
        .pool()
        .unwrap();
    let store = PostgresStore::new(pool)
        .with_table(&schema.table("dedup"))
        .unwrap()
        .operation_timeout(Duration::from_secs(3));
    store.migrate().await.unwrap();
    drop(admin);

    let outage = Outage {
        stop: || service("stop"),
        start: || service("start"),
        durable: true,
    };
    let summary = requeues_and_runs_each_message_once(Arc::new(store), outage)
        .await
        .expect("the store outage scenario holds");
    assert_eq!(summary.duplicates, 20, "keys survived the restart");
    schema.drop_all(&common::admin().await).await;
}
