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
/// Its `Debug` output shows the URL with the password hidden.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact_conninfo(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

/// `url` with its password hidden: a `postgres://` URL through
/// [`backstop::redact::redact_url`], a `key=value` string with every
/// `password=…` value replaced (quoted values included).
fn redact_conninfo(url: &str) -> String {
    if url.contains("://") {
        return backstop::redact::redact_url(url);
    }
    let Some(start) = url.find("password") else {
        return url.to_owned();
    };
    let Some(eq) = url[start..].find('=').map(|i| start + i) else {
        return url.to_owned();
    };
    let value = url[eq + 1..].trim_start();
    let value_start = url.len() - value.len();
    let value_end = if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        let close = quoted.char_indices().find(|&(_, c)| {
            let end = c == '\'' && !escaped;
            escaped = c == '\\' && !escaped;
            end
        });
        close.map_or(url.len(), |(i, _)| value_start + 1 + i + 1)
    } else {
        value
            .find(char::is_whitespace)
            .map_or(url.len(), |i| value_start + i)
    };
    format!(
        "{}{}{}",
        &url[..value_start],
        backstop::redact::HIDDEN,
        redact_conninfo(&url[value_end..])
    )
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
    ///
    /// TLS follows the URL's `sslmode` (see the crate docs); certificate
    /// files are read for every new connection.
    pub fn pool(&self) -> Result<Pool, PostgresError> {
        let tls = crate::tls::parse(&self.url).map_err(PostgresError::InvalidTls)?;
        let mut pg: tokio_postgres::Config = tls.url.parse().map_err(PostgresError::InvalidUrl)?;
        pg.connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(name) = &self.application_name {
            pg.application_name(name);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls.options {
            None => Manager::from_config(pg, NoTls, manager_config),
            #[cfg(feature = "tls")]
            Some(options) => {
                Manager::from_config(pg, crate::tls::Reloading(options), manager_config)
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(PostgresError::InvalidTls(
                    backstop::tls::TlsError::NotBuilt("the PostgreSQL URL".into()).to_string(),
                ));
            }
        };
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

    #[test]
    fn debug_hides_the_password() {
        for url in [
            "postgres://u:s3cret@h/db",
            "postgres://u:p@s3cret@h/db",
            "host=h user=u password=s3cret dbname=db",
            "host=h password='s3 cret' user=u",
        ] {
            let shown = format!("{:?}", PgConfig::new(url));
            assert!(!shown.contains("s3"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(
            redact_conninfo("host=h password='a\\'b' user=u"),
            "host=h password=*** user=u"
        );
    }
}
