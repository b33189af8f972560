//! [`Conn`]: a pooled connection used with bounded statements, which never
//! goes back to the pool in a bad state.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::PostgresError;

/// A checked-out connection.
///
/// A statement that times out, or a connection that broke, discards the
/// connection instead of returning it to the pool. A `Conn` dropped while
/// [`in_transaction`](Conn::set_in_transaction) is discarded too: the server
/// rolls the open transaction back when the connection closes, so a dirty
/// connection never reaches the next user of the pool.
pub(crate) struct Conn {
    client: Option<Object>,
    in_transaction: bool,
}

impl Conn {
    /// A pooled connection, waiting at most `timeout` on top of the pool's own limits.
    pub(crate) async fn checkout(pool: &Pool, timeout: Duration) -> Result<Self, PostgresError> {
        match tokio::time::timeout(timeout, pool.get()).await {
            Ok(client) => Ok(Conn {
                client: Some(client?),
                in_transaction: false,
            }),
            Err(_) => Err(PostgresError::Timeout {
                op: "connection checkout",
                after: timeout,
            }),
        }
    }

    /// The client, mutably (for a mapped lock guard).
    pub(crate) fn client_mut(&mut self) -> Option<&mut Object> {
        self.client.as_mut()
    }

    /// Marks whether a transaction is open (then a drop discards the connection).
    pub(crate) fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    /// Closes the connection instead of returning it to the pool.
    pub(crate) fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }

    /// Returns a clean connection to the pool (a dirty one is discarded).
    pub(crate) fn release(&mut self) {
        if self.in_transaction {
            self.discard();
        } else {
            drop(self.client.take());
        }
    }

    /// Settles one bounded statement's outcome: a timeout or a broken
    /// connection discards the connection.
    fn settle<T>(
        &mut self,
        op: &'static str,
        timeout: Duration,
        outcome: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, PostgresError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => {
                if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                    self.discard();
                }
                Err(PostgresError::Query { op, source })
            }
            Err(_) => {
                self.discard();
                Err(PostgresError::Timeout { op, after: timeout })
            }
        }
    }

    fn gone(op: &'static str) -> PostgresError {
        PostgresError::Discarded { op }
    }

    async fn within<F: Future>(
        timeout: Duration,
        future: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout(timeout, future).await
    }

    /// Runs a prepared (cached) statement; the number of rows it changed.
    pub(crate) async fn execute(
        &mut self,
        op: &'static str,
        timeout: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PostgresError> {
        let client = self.client.as_ref().ok_or_else(|| Self::gone(op))?;
        let outcome = Self::within(timeout, async {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, params).await
        })
        .await;
        self.settle(op, timeout, outcome)
    }

    /// Runs a prepared (cached) query; its rows.
    pub(crate) async fn query(
        &mut self,
        op: &'static str,
        timeout: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PostgresError> {
        let client = self.client.as_ref().ok_or_else(|| Self::gone(op))?;
        let outcome = Self::within(timeout, async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await;
        self.settle(op, timeout, outcome)
    }

    /// Runs statements without parameters (`BEGIN`, `COMMIT`, DDL).
    pub(crate) async fn batch(
        &mut self,
        op: &'static str,
        timeout: Duration,
        sql: &str,
    ) -> Result<(), PostgresError> {
        let client = self.client.as_ref().ok_or_else(|| Self::gone(op))?;
        let outcome = Self::within(timeout, client.batch_execute(sql)).await;
        self.settle(op, timeout, outcome)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.in_transaction {
            self.discard();
        }
    }
}
