//! [`RedisStore`]: the idempotency [`Store`] on Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backstop::idempotency::{Claim, Key};
use backstop::{Store, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::scripts::{CLAIM_SCRIPT, FINISH_SCRIPT, RELEASE_SCRIPT, RENEW_SCRIPT};
use crate::{RedisConfig, RedisStoreError};

/// An idempotency [`Store`] on Redis, shared by every worker that uses the
/// same server and key prefix.
///
/// Each operation is one Lua script, so a claim (with takeover of an
/// expired lease and the redrive rule) is atomic in one round trip; lease
/// times come from the server's clock. The failed-run count lives in Redis
/// and survives worker restarts. Finished keys expire after the TTL by
/// Redis' own key expiry. The connection is a [`ConnectionManager`]: after a
/// lost connection, the next operations reconnect; until Redis answers they
/// fail with [`StoreError::Backend`] within the operation timeout, and
/// backstop defers the message.
///
/// Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whole milliseconds, at least one (Lua numbers are exact below 2^53).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 1 << 52)
}

impl RedisStore {
    /// Connects to `url` with the default [`RedisConfig`]; fails if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, RedisStoreError> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with `config`; fails if Redis does not answer a `PING` in time.
    pub async fn connect_with(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let store = Self::connect_lazy(config)?;
        store.ping().await.map_err(|error| match error {
            RedisStoreError::Command { source, .. } => RedisStoreError::Connect(source),
            other => other,
        })?;
        Ok(store)
    }

    /// A store that connects on first use, so a worker can start while Redis
    /// is down (its messages are deferred until Redis answers). Only the URL
    /// is checked. Must be called inside a Tokio runtime.
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(RedisStoreError::InvalidUrl)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection = client
            .get_connection_manager_lazy(manager)
            .map_err(RedisStoreError::Connect)?;
        Ok(RedisStore {
            connection,
            prefix: Arc::from(config.prefix),
            ttl: config.ttl,
            timeout: config.operation_timeout,
        })
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let mut connection = self.connection.clone();
        let pong: String = self
            .bounded("ping", async move {
                redis::cmd("PING").query_async(&mut connection).await
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisStoreError::UnexpectedReply {
                op: "ping",
                reply: pong,
            })
        }
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How long finished keys are remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The Redis key holding `key`'s state.
    pub fn redis_key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(RedisStoreError::Command { op, source }),
            Err(_) => Err(RedisStoreError::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }

    /// Runs an owner-checked script; true if `owner` held the lease.
    async fn owned(
        &self,
        op: &'static str,
        script: &redis::Script,
        key: &Key,
        owner: &str,
        arg: &str,
        ttl: u64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = script.key(self.redis_key(key));
        invocation.arg(owner).arg(arg).arg(ttl);
        let done: i64 = self
            .bounded(op, invocation.invoke_async(&mut connection))
            .await?;
        Ok(done == 1)
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = CLAIM_SCRIPT.key(self.redis_key(key));
        invocation
            .arg(owner)
            .arg(millis(lease))
            .arg(replay)
            .arg(millis(self.ttl));
        let (verdict, n): (String, i64) = self
            .bounded("claim", invocation.invoke_async(&mut connection))
            .await?;
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        match verdict.as_str() {
            "acquired" => Ok(Claim::Acquired {
                failed_runs: count(n),
            }),
            "busy" => Ok(Claim::Busy {
                remaining: Duration::from_millis(u64::try_from(n.max(0)).unwrap_or(0)),
            }),
            "completed" => Ok(Claim::Completed),
            "dead_lettered" => Ok(Claim::DeadLettered),
            _ => Err(RedisStoreError::UnexpectedReply {
                op: "claim",
                reply: format!("{verdict} {n}"),
            }
            .into()),
        }
    }

    async fn renew(&self, key: &Key, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let lease = millis(lease).to_string();
        self.owned("renew", &RENEW_SCRIPT, key, owner, &lease, millis(self.ttl))
            .await
    }

    async fn complete(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        self.owned(
            "complete",
            &FINISH_SCRIPT,
            key,
            owner,
            "completed",
            millis(self.ttl),
        )
        .await
    }

    async fn dead_letter(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        self.owned(
            "dead_letter",
            &FINISH_SCRIPT,
            key,
            owner,
            "dead_lettered",
            millis(self.ttl),
        )
        .await
    }

    async fn release(
        &self,
        key: &Key,
        owner: &str,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let failed = failed_runs.map(|n| n.to_string()).unwrap_or_default();
        self.owned(
            "release",
            &RELEASE_SCRIPT,
            key,
            owner,
            &failed,
            millis(self.ttl),
        )
        .await
        .map(drop)
    }
}
