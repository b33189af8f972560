//! [`RedisConfig`]: where the store connects, how it names keys, how long it waits.

use std::time::Duration;

/// How a [`RedisStore`](crate::RedisStore) connects and keeps its keys.
///
/// Defaults: key prefix `backstop:idempotency:`, finished keys kept 24 h,
/// 2 s per operation, 2 s per connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server, as `redis://[user:password@]host[:port][/db]`.
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
        }
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
}
