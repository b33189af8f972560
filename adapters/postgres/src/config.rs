//! [`PgConfig`]: a connection pool with bounded waits.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::PostgresError;

/// How to reach PostgreSQL; [`PgConfig::pool`] builds the pool the store and
/// the inbox share or use apart.
///
/// Every wait is bounded, so a server that is down costs a failed operation
/// (the message is deferred), never a hung worker. Defaults: 16 connections,
/// 2 s to connect, 5 s to wait for a free connection, TCP keepalives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// The server, as `postgres://user:password@host:port/db` (or a key=value string).
    pub url: String,
    /// The most connections the pool opens.
    pub max_connections: usize,
    /// The most one connection attempt may take.
    pub connect_timeout: Duration,
    /// The most a caller waits for a free connection.
    pub wait_timeout: Duration,
    /// Shown in `pg_stat_activity.application_name`.
    pub application_name: Option<String>,
}

impl PgConfig {
    /// The defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(5),
            application_name: None,
        }
    }

    /// Sets the pool size (at least 1).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the connection timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a caller waits for a free connection.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Sets the application name.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Builds the pool. It connects lazily: a server that is down is no
    /// error here, only for the operations that need it. Must be called
    /// inside a Tokio runtime.
    pub fn pool(&self) -> Result<Pool, PostgresError> {
        let mut pg: tokio_postgres::Config = self.url.parse().map_err(PostgresError::InvalidUrl)?;
        pg.connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(name) = &self.application_name {
            pg.application_name(name);
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.max_connections)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PostgresError::BuildPool(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_is_lazy_and_url_is_checked() {
        let pool = PgConfig::new("postgres://u:p@127.0.0.1:1/db")
            .max_connections(0)
            .pool()
            .unwrap();
        assert_eq!(pool.status().max_size, 1);
        assert_eq!(pool.status().size, 0, "no connection opened yet");
        assert!(matches!(
            PgConfig::new("postgres://u@h:notaport/db").pool(),
            Err(PostgresError::InvalidUrl(_))
        ));
    }
}
