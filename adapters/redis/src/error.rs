//! [`RedisStoreError`]: what went wrong talking to Redis.

use std::time::Duration;

/// A failure of the Redis store.
///
/// Store operations hand it to backstop boxed in
/// [`StoreError::Backend`](backstop::StoreError::Backend): the message is
/// deferred (nacked with backoff), never dead-lettered, and runs once Redis
/// answers again.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The connection URL could not be parsed.
    #[error("invalid Redis URL (expected redis://[user:password@]host[:port][/db]): {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// The first connection failed (see [`RedisStore::connect_lazy`](crate::RedisStore::connect_lazy)
    /// to start without a reachable server).
    #[error("could not connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// A command failed (connection lost, server error).
    #[error("Redis {op} failed: {source}")]
    Command {
        /// The store operation (`claim`, `renew`, …).
        op: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time; the server may be down or overloaded.
    #[error("Redis {op} did not answer within {after:?}; is the server up?")]
    Timeout {
        /// The store operation.
        op: &'static str,
        /// The configured operation timeout.
        after: Duration,
    },
    /// A script answered something the store does not understand (another
    /// program writes under the store's key prefix?).
    #[error(
        "Redis {op} returned an unexpected reply {reply:?}; is another program using the key prefix?"
    )]
    UnexpectedReply {
        /// The store operation.
        op: &'static str,
        /// The reply, as text.
        reply: String,
    },
}

impl From<RedisStoreError> for backstop::StoreError {
    fn from(error: RedisStoreError) -> Self {
        backstop::StoreError::Backend(Box::new(error))
    }
}
