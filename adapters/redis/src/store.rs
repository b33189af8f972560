//! [`RedisStore`]: the idempotency [`Store`] on Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backstop::error::{Failure, StoreError};
use backstop::idempotency::Store;
use backstop::idempotency::{Claim, ClaimOf, Fence, Held, Key, KeyLayout, Layout};
use redis::aio::ConnectionManager;

use crate::link::Link;
use crate::scripts::{
    CLAIM_MANY_SCRIPT, CLAIM_SCRIPT, DEFER_LETTER_SCRIPT, FINISH_MANY_SCRIPT, FINISH_SCRIPT,
    RELEASE_SCRIPT, RENEW_MANY_SCRIPT, RENEW_SCRIPT,
};
use crate::verdict::{Verdict, claim_of};
use crate::{RedisConfig, RedisStoreError};

/// An idempotency [`Store`] on Redis, shared by every worker that uses the
/// same server and key prefix.
///
/// Each operation is one Lua script, so a claim (with takeover of an
/// expired lease, crash counting and the redrive rule) is atomic in one
/// round trip; lease times and fencing tokens come from the server's clock.
/// A batch (`claim_many`, `renew_many`, `complete_many`) is one script over
/// all its keys, one round trip, still one answer per key (the keys of a
/// batch must live on one server: no Redis Cluster). The failed-run count lives in Redis
/// and survives worker restarts, and so does a dead letter whose write failed
/// ([`Store::release_with_letter`]): the next claim of its key, on any worker,
/// reports it, so the redelivery writes only that letter. Finished keys expire after the TTL by
/// Redis' own key expiry. The connection is a [`ConnectionManager`]: after a
/// lost connection, the next operations reconnect; until Redis answers they
/// fail with [`StoreError::Backend`] within the operation timeout, and
/// backstop defers the message. Over TLS (`rediss://`) a lost connection is
/// replaced by a new client built from the CA and client certificate files
/// as they are then, so a rotated certificate is used from the next
/// reconnect on, without a restart.
///
/// Cheap to clone (clones share the connection).
///
/// Built without a server (it connects on first use), so a worker starts
/// while Redis is down:
///
/// ```
/// use std::time::Duration;
///
/// use backstop::idempotency::Key;
/// use backstop_redis::{RedisConfig, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), backstop_redis::RedisStoreError> {
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .prefix("orders:")
///     .ttl(Duration::from_secs(7 * 24 * 3600));
/// let store = RedisStore::connect_lazy(config)?;
/// assert_eq!(store.redis_key(&Key::new("order-42")), "orders:order-42");
/// assert_eq!(store.ttl(), Duration::from_secs(604_800));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    prefix: Arc<str>,
    ttl: Duration,
    timeout: Duration,
    /// The user's choice of key layout, and the layout found on first use.
    choice: KeyLayout,
    layout: Arc<tokio::sync::OnceCell<Layout>>,
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
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 1 << 52)
}

impl RedisStore {
    /// Connects to `url` with the default [`RedisConfig`]; fails if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, RedisStoreError> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with `config`; fails if Redis does not answer a `PING` in
    /// time, or if the keys under the prefix do not fit the chosen
    /// [`layout`](RedisConfig::layout) ([`RedisStoreError::Layout`], which
    /// says what to choose).
    pub async fn connect_with(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let plain = config.url.starts_with("redis://");
        let url = backstop::redact::redact_url(&config.url);
        let store = Self::connect_lazy(config)?;
        store.ping().await.map_err(|error| match error {
            RedisStoreError::Command { source, .. } if plain && crate::error::hung_up(&source) => {
                RedisStoreError::PlainTextRefused { url, source }
            }
            RedisStoreError::Command { source, .. } => RedisStoreError::Connect(source),
            other => other,
        })?;
        store.key_layout().await?;
        Ok(store)
    }

    /// A store that connects on first use, so a worker can start while Redis
    /// is down (its messages are deferred until Redis answers). Only the URL
    /// is checked; the key layout is checked at the first message (until it
    /// fits, messages are deferred). Must be called inside a Tokio runtime.
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let (prefix, ttl, timeout) = (
            Arc::from(config.prefix.as_str()),
            config.ttl,
            config.operation_timeout,
        );
        Ok(RedisStore {
            choice: config.layout,
            link: Arc::new(Link::new(config)?),
            prefix,
            ttl,
            timeout,
            layout: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// The key layout under the prefix: read from its marker (or decided and
    /// marked) on first use, then remembered.
    pub async fn key_layout(&self) -> Result<Layout, RedisStoreError> {
        self.layout
            .get_or_try_init(|| self.open_layout(self.choice))
            .await
            .copied()
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let pong: String = self
            .bounded("ping", |mut connection| async move {
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

    /// Runs `operation` on the store's connection within the operation
    /// timeout; a lost connection is reported to the link (over TLS the
    /// next operation reconnects with the certificate files read again).
    pub(crate) async fn bounded<T, F, Fut>(
        &self,
        op: &'static str,
        operation: F,
    ) -> Result<T, RedisStoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let lease = self.link.lease()?;
        match tokio::time::timeout(self.timeout, operation(lease.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => {
                self.link.failed(&lease, Some(&source));
                Err(RedisStoreError::Command { op, source })
            }
            Err(_) => {
                self.link.failed(&lease, None);
                Err(RedisStoreError::Timeout {
                    op,
                    after: self.timeout,
                })
            }
        }
    }

    /// Runs a fence-checked script; true if the lease `fence` was held.
    async fn owned(
        &self,
        op: &'static str,
        script: &redis::Script,
        key: &Key,
        fence: Fence,
        arg: &str,
        ttl: u64,
    ) -> Result<bool, StoreError> {
        let mut invocation = script.key(self.redis_key(key));
        invocation.arg(fence.0.to_string()).arg(arg).arg(ttl);
        let done: i64 = self
            .bounded(op, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(done == 1)
    }

    /// Runs a batch script over `held` (`ARGV` `first`, `second`, then each
    /// fence); one answer per key, or the same error for each.
    async fn owned_many(
        &self,
        op: &'static str,
        script: &redis::Script,
        held: &[Held<'_>],
        first: &str,
        second: u64,
    ) -> Vec<Result<bool, StoreError>> {
        if held.is_empty() {
            return Vec::new();
        }
        let mut invocation = script.prepare_invoke();
        invocation.arg(first).arg(second);
        for h in held {
            invocation
                .key(self.redis_key(h.key))
                .arg(h.fence.0.to_string());
        }
        match self
            .bounded::<Vec<i64>, _, _>(op, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
        {
            Ok(done) if done.len() == held.len() => done.into_iter().map(|d| Ok(d == 1)).collect(),
            Ok(done) => each_fails(
                held.len(),
                &RedisStoreError::UnexpectedReply {
                    op,
                    reply: format!("{} answers for {} keys", done.len(), held.len()),
                },
            ),
            Err(error) => each_fails(held.len(), &error),
        }
    }
}

/// The same error for each of `n` items of a batch.
fn each_fails<T>(n: usize, error: &RedisStoreError) -> Vec<Result<T, StoreError>> {
    (0..n)
        .map(|_| Err(StoreError::Backend(error.to_string().into())))
        .collect()
}

/// Milliseconds since the Unix epoch of `time` (0 before it), as text.
fn epoch_ms(time: std::time::SystemTime) -> String {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

#[async_trait::async_trait]
impl Store for RedisStore {
    /// True: the stack batches this store's calls.
    fn remote(&self) -> bool {
        true
    }

    async fn layout(&self) -> Result<Layout, StoreError> {
        Ok(self.key_layout().await?)
    }

    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let mut invocation = CLAIM_SCRIPT.key(self.redis_key(key));
        invocation
            .arg(owner)
            .arg(millis(lease))
            .arg(replay)
            .arg(millis(self.ttl));
        let verdict: Verdict = self
            .bounded("claim", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        claim_of("claim", verdict)
    }

    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        let lease = millis(lease).to_string();
        self.owned("renew", &RENEW_SCRIPT, key, fence, &lease, millis(self.ttl))
            .await
    }

    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.owned(
            "complete",
            &FINISH_SCRIPT,
            key,
            fence,
            "completed",
            millis(self.ttl),
        )
        .await
    }

    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.owned(
            "mark_dead_lettered",
            &FINISH_SCRIPT,
            key,
            fence,
            "dead_lettered",
            millis(self.ttl),
        )
        .await
    }

    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let failed = failed_runs.map(|n| n.to_string()).unwrap_or_default();
        self.owned(
            "release",
            &RELEASE_SCRIPT,
            key,
            fence,
            &failed,
            millis(self.ttl),
        )
        .await
        .map(drop)
    }

    async fn release_with_letter(
        &self,
        key: &Key,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let mut invocation = DEFER_LETTER_SCRIPT.key(self.redis_key(key));
        invocation
            .arg(fence.0.to_string())
            .arg(millis(self.ttl))
            .arg(letter.kind.as_str())
            .arg(letter.message.as_str())
            .arg(letter.attempts)
            .arg(epoch_ms(letter.first_failure))
            .arg(epoch_ms(letter.last_failure));
        let done: i64 = self
            .bounded("release_with_letter", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(done == 1)
    }

    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        if claims.is_empty() {
            return Vec::new();
        }
        let mut invocation = CLAIM_MANY_SCRIPT.prepare_invoke();
        invocation.arg(millis(lease)).arg(millis(self.ttl));
        for c in claims {
            invocation
                .key(self.redis_key(c.key))
                .arg(c.owner)
                .arg(c.replay);
        }
        match self
            .bounded::<Vec<Verdict>, _, _>("claim_many", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
        {
            Ok(verdicts) if verdicts.len() == claims.len() => verdicts
                .into_iter()
                .map(|v| claim_of("claim_many", v))
                .collect(),
            Ok(verdicts) => each_fails(
                claims.len(),
                &RedisStoreError::UnexpectedReply {
                    op: "claim_many",
                    reply: format!("{} answers for {} keys", verdicts.len(), claims.len()),
                },
            ),
            Err(error) => each_fails(claims.len(), &error),
        }
    }

    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        let lease = millis(lease).to_string();
        self.owned_many(
            "renew_many",
            &RENEW_MANY_SCRIPT,
            held,
            &lease,
            millis(self.ttl),
        )
        .await
    }

    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        self.owned_many(
            "complete_many",
            &FINISH_MANY_SCRIPT,
            held,
            "completed",
            millis(self.ttl),
        )
        .await
    }
}
