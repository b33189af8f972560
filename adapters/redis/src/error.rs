//! [`RedisStoreError`]: what went wrong talking to Redis.

use std::time::Duration;

/// A failure of the Redis store.
///
/// Store operations hand it to backstop boxed in
/// [`StoreError::Backend`](backstop::error::StoreError::Backend): the message is
/// deferred (nacked with backoff), never dead-lettered, and runs once Redis
/// answers again.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The connection URL could not be parsed.
    #[error("invalid Redis URL (expected redis://[user:password@]host[:port][/db]): {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// The TLS settings cannot be used (unreadable file, `rediss://` in a
    /// build without TLS, …).
    #[error("invalid Redis TLS settings: {0}")]
    Tls(String),
    /// The first connection failed (see [`RedisStore::connect_lazy`](crate::RedisStore::connect_lazy)
    /// to start without a reachable server).
    #[error("could not connect to Redis: {0}{hint}", hint = tls_hint(.0))]
    Connect(#[source] redis::RedisError),
    /// The server hung up on a plain-text (`redis://`) connection before
    /// answering: most likely a TLS port.
    #[error(
        "Redis at {url} closed the plain-text connection before answering ({source}); if it is a TLS port, use rediss://"
    )]
    PlainTextRefused {
        /// The URL, its password hidden.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A command failed (connection lost, server error).
    #[error("Redis {op} failed: {source}{}", tls_hint(.source))]
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
    /// The keys under the prefix do not follow the chosen key layout
    /// ([`RedisConfig::layout`](crate::RedisConfig::layout)); the error says what to choose.
    #[error(transparent)]
    Layout(#[from] backstop::idempotency::LayoutError),
}

/// What a TLS failure behind `error` means (an untrusted server, a refused
/// client certificate, a plain-text port, …), to follow its own text.
fn tls_hint(error: &redis::RedisError) -> String {
    #[cfg(feature = "tls")]
    if let Some(reason) = backstop::tls::explain(error) {
        return format!(" ({reason})");
    }
    let _ = error;
    String::new()
}

/// True when the server reset or closed the connection (not when it refused it).
pub(crate) fn hung_up(error: &redis::RedisError) -> bool {
    use std::error::Error as _;
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let io = error
        .source()
        .and_then(|e| e.downcast_ref::<Shared>())
        .and_then(|e| e.downcast_ref::<std::io::Error>());
    io.is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        )
    })
}

impl From<RedisStoreError> for backstop::error::StoreError {
    fn from(error: RedisStoreError) -> Self {
        match error {
            RedisStoreError::Layout(error) => backstop::error::StoreError::Layout(error),
            other => backstop::error::StoreError::Backend(Box::new(other)),
        }
    }
}
