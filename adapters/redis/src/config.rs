//! [`RedisConfig`]: where the store connects, how it names keys, how long it waits.

use std::time::Duration;

use backstop::idempotency::KeyLayout;
use backstop::tls::TlsOptions;

/// How a [`RedisStore`](crate::RedisStore) connects and keeps its keys.
///
/// `rediss://host:port` connects over TLS (feature `tls`, rustls with the
/// ring provider), verifying the server against [`RedisConfig::tls`]'s CA
/// file or the system roots.
///
/// Defaults: key prefix `backstop:idempotency:`, finished keys kept 24 h,
/// 2 s per operation, 2 s per connection attempt, per-consumer keyspaces
/// ([`KeyLayout::Keyspaced`]: a prefix holding keys of an earlier release
/// is refused until [`RedisConfig::layout`] says what to do with them).
///
/// Its `Debug` output shows the URL with the password hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server, as `redis://[user:password@]host[:port][/db]` (`rediss://` for TLS).
    pub url: String,
    /// Prepended to every idempotency key (one namespace per consumer group or app).
    pub prefix: String,
    /// How long completed, dead-lettered and released keys are remembered.
    pub ttl: Duration,
    /// The most one store operation may take, reconnection included; past
    /// it the operation fails with [`RedisStoreError::Timeout`](crate::RedisStoreError::Timeout)
    /// and the message is deferred.
    pub operation_timeout: Duration,
    /// The most one connection attempt may take.
    pub connect_timeout: Duration,
    /// For `rediss://`: the CA file (else the system roots) and the client
    /// certificate (mutual TLS). Read when the store is built, and again
    /// for each reconnect after a lost connection (a rotated certificate
    /// needs no restart).
    pub tls: TlsOptions,
    /// What to do with the key layout found under the prefix (see
    /// [`KeyLayout`]); checked when the store connects.
    pub layout: KeyLayout,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &backstop::redact::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("layout", &self.layout)
            .finish()
    }
}

impl RedisConfig {
    /// The defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "backstop:idempotency:".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            operation_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            tls: TlsOptions::default(),
            layout: KeyLayout::default(),
        }
    }

    /// Sets what to do with the key layout found under the prefix: keep an
    /// earlier release's global keys ([`KeyLayout::Legacy`]) or upgrade
    /// them ([`KeyLayout::Migrate`]).
    #[must_use]
    pub fn layout(mut self, layout: KeyLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the TLS files of a `rediss://` server.
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long finished keys are remembered (at least 1 ms).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Sets the per-operation timeout.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the per-connection-attempt timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_fields_and_keeps_ttl_positive() {
        let c = RedisConfig::new("redis://h")
            .prefix("app:")
            .ttl(Duration::ZERO)
            .operation_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(200));
        assert_eq!(c.url, "redis://h");
        assert_eq!(c.prefix, "app:");
        assert_eq!(c.ttl, Duration::from_millis(1));
        assert_eq!(c.operation_timeout, Duration::from_millis(300));
        assert_eq!(c.connect_timeout, Duration::from_millis(200));
    }

    #[test]
    fn debug_hides_the_password() {
        for url in ["redis://:s3cret@h:6379", "redis://u:p@s3cret@h/0"] {
            let shown = format!("{:?}", RedisConfig::new(url));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("redis://"), "{shown}");
        }
    }
}
