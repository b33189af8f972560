//! `backstop outbox pending|refused|retry` against a real PostgreSQL
//! outbox: a row the broker refused for good is listed (table and JSON),
//! put back in line, and counted as pending again; a bad URL is an error
//! that does not show the password.

mod common;

use std::time::Duration;

use backstop::Message;
use backstop::publish::{PublishError, Publisher};
use backstop_postgres::outbox::RelayConfig;
use backstop_postgres::{Outbox, PgConfig};
use common::*;

fn pg_url() -> String {
    std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned())
}

/// Refuses bodies starting with "poison" for good; takes the rest.
#[derive(Clone)]
struct Picky;

#[async_trait::async_trait]
impl Publisher for Picky {
    async fn publish(&self, _: &str, message: &Message) -> Result<(), PublishError> {
        if message.payload.starts_with(b"poison") {
            return Err(PublishError::Invalid("a header the broker refuses".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_counts_and_retries_the_rows_the_broker_refused() {
    let url = pg_url();
    let pool = PgConfig::new(&url).max_connections(4).pool().unwrap();
    let schema = unique("cli_outbox").replace('-', "_");
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let table = format!("{schema}.outbox");
    let outbox = Outbox::new(pool.clone()).with_table(&table).unwrap();
    outbox.migrate().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    for body in ["fine-1", "poison-2", "fine-3"] {
        let message = Message::new(body).with_key("k").with_message_id(body);
        outbox.insert(&*tx, "orders", &message).await.unwrap();
    }
    tx.commit().await.unwrap();
    let relay = outbox.relay(
        Picky,
        RelayConfig::default().standby_poll(Duration::from_millis(100)),
    );
    let mut refused = Vec::new();
    for _ in 0..100 {
        refused = outbox.refused(10).await.unwrap();
        if !refused.is_empty() && outbox.pending().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
    assert_eq!(refused.len(), 1);

    let listed = cli_ok(&["outbox", "refused", "--url", &url, "--table", &table]);
    assert!(listed.contains("poison-2"), "{listed}");
    assert!(listed.contains("invalid"), "{listed}");
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&[
        "outbox", "refused", "--url", &url, "--table", &table, "--json",
    ]))
    .unwrap();
    assert_eq!(json[0]["message_id"], "poison-2");
    assert_eq!(json[0]["destination"], "orders");
    let seq = json[0]["seq"].as_u64().unwrap();
    assert_eq!(
        cli_ok(&["outbox", "pending", "--url", &url, "--table", &table]).trim(),
        "0"
    );

    let retried = cli_ok(&[
        "outbox",
        "retry",
        "--url",
        &url,
        "--table",
        &table,
        "--seq",
        &seq.to_string(),
    ]);
    assert!(retried.contains("back in line"), "{retried}");
    assert_eq!(
        cli_ok(&["outbox", "pending", "--url", &url, "--table", &table]).trim(),
        "1",
        "the row waits for the relay again"
    );
    let again = cli(&[
        "outbox",
        "retry",
        "--url",
        &url,
        "--table",
        &table,
        "--seq",
        &seq.to_string(),
    ]);
    assert!(
        !again.status.success(),
        "a row not refused cannot be retried"
    );

    let bad = cli(&[
        "outbox",
        "pending",
        "--url",
        "postgres://backstop:s3cret@127.0.0.1:1/backstop",
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !stderr.contains("s3cret"),
        "the password is not shown: {stderr}"
    );
    assert!(stderr.contains("outbox"), "{stderr}");

    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
