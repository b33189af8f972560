//! Shared by the PostgreSQL test binaries: the server, unique names, counts.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub fn url() -> String {
    std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned())
}

/// A fresh lowercase identifier: `<what>_<random hex>`.
pub fn unique(what: &str) -> String {
    format!("{what}_{}", &backstop::message::new_message_id()[..12])
}

/// A plain connection for checks from outside the code under test.
pub async fn admin() -> Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("PostgreSQL runs (scripts/services/postgres.sh)");
    tokio::spawn(connection);
    client
}

/// `SELECT count(*)` of `from_where` (`table WHERE …`).
pub async fn count(client: &Client, from_where: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {from_where}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `application_name` has no connection idle in a transaction;
/// false if one is still there after `deadline`.
pub async fn no_connection_left_in_transaction(
    client: &Client,
    application_name: &str,
    deadline: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                &[&application_name],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A schema of its own for a test, dropped with everything in it by [`Schema::drop_all`].
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub async fn create(client: &Client) -> Schema {
        let name = unique("bt");
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Schema { name }
    }

    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    pub async fn drop_all(self, client: &Client) {
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}
