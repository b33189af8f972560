//! [`blocking`]: librdkafka's synchronous calls, run off the async threads.

use tokio::task::JoinError;

/// Runs `f` (blocking client work: librdkafka's metadata, watermark and
/// offset requests, a read of a whole topic) on tokio's blocking threads and
/// returns its result; a panic in `f` comes back as an `E`.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
