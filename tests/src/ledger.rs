//! The worker's execution ledger, in a PostgreSQL schema of the run's own.
//!
//! The worker writes `backstop_ledger` (and its inbox table) unqualified, so
//! a URL with `options=-csearch_path=<schema>` puts every table of a run in
//! that schema: runs never see each other's rows and need no worker flag.

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

/// The base URL: `BACKSTOP_PG_URL`, else the test server.
pub fn base_url() -> String {
    std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned())
}

/// A run's schema and a connection to it.
#[derive(Debug)]
pub struct Ledger {
    client: Client,
    schema: String,
    url: String,
}

const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS backstop_ledger (order_id text NOT NULL, executed_at timestamptz NOT NULL DEFAULT now())";

impl Ledger {
    /// Creates the schema `schema` (`[a-z0-9_]` only) with an empty ledger table.
    pub async fn create(schema: &str) -> Result<Ledger, tokio_postgres::Error> {
        assert!(
            schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "schema names here are [a-z0-9_]"
        );
        let base = base_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; {LEDGER_DDL}"
            ))
            .await?;
        Ok(Ledger {
            client,
            schema: schema.to_owned(),
            url,
        })
    }

    /// The URL the worker gets (`--ledger`): it lands in this schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ledger rows in all.
    pub async fn rows(&self) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM backstop_ledger", &[])
            .await?;
        Ok(row.get(0))
    }

    /// How many times each order id was executed.
    pub async fn executions(&self) -> Result<HashMap<String, i64>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT order_id, count(*) FROM backstop_ledger GROUP BY order_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The order ids of every row, in the order they were executed (each
    /// row's transaction start; a key's orders run one after the other).
    pub async fn in_execution_order(&self) -> Result<Vec<String>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT order_id FROM backstop_ledger ORDER BY executed_at, order_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Rows in the inbox table (`None` if the worker did not create one here).
    pub async fn inbox_rows(&self) -> Option<i64> {
        let row = self
            .client
            .query_one(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name LIKE '%inbox%' LIMIT 1",
                &[&self.schema],
            )
            .await
            .ok()?;
        let table: String = row.get(0);
        let row = self
            .client
            .query_one(
                &format!("SELECT count(*) FROM {}.{table}", self.schema),
                &[],
            )
            .await
            .ok()?;
        Some(row.get(0))
    }

    /// `SELECT count(*) FROM <from_where>` in the run's schema (tables unqualified).
    pub async fn count(&self, from_where: &str) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(&format!("SELECT count(*) FROM {from_where}"), &[])
            .await?;
        Ok(row.get(0))
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(&self) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
    }
}
