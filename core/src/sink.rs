//! [`SinkError`]: a write to a sink ([`DeadLetterSink`](crate::dead_letter::DeadLetterSink),
//! [`RetrySink`](crate::retry::RetrySink)) that the broker did not confirm.

/// A write to a sink (DLQ, retry queue) that the broker did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker refused or did not confirm the write.
    #[error("publish to {destination:?} failed: {source}")]
    Publish {
        /// The queue or topic written to.
        destination: String,
        /// The publisher's error.
        #[source]
        source: crate::publish::PublishError,
    },
    /// The sink cannot serve this message (misconfiguration).
    #[error("sink cannot take the message: {0}")]
    Unsupported(String),
}

impl SinkError {
    /// True when writing this message to this sink again cannot succeed
    /// until an operator changes something (the message is too large, the
    /// destination is missing or unroutable, access is denied, or the sink
    /// cannot serve the message at all); see [`PublishError::is_permanent`](crate::publish::PublishError::is_permanent).
    /// A transient error (no confirm, a full queue, the broker away) may
    /// pass on a later try.
    pub fn is_permanent(&self) -> bool {
        match self {
            SinkError::Publish { source, .. } => source.is_permanent(),
            SinkError::Unsupported(_) => true,
        }
    }
}
