use std::sync::Arc;
use std::time::Duration;

use super::MemoryBroker;
use crate::dead_letter::{DeadLetterSink, dlq_name};
use crate::error::SinkError;
use crate::message::Message;
use crate::retry::RetrySink;

/// The in-memory broker's DLQ writer: `<queue>.dlq` of the queue the
/// message was consumed from ([`Meta::origin`](crate::message::Meta::origin)) unless told otherwise.
#[derive(Clone, Debug)]
pub struct MemoryDeadLetterSink {
    pub(crate) broker: MemoryBroker,
}

#[async_trait::async_trait]
impl DeadLetterSink for MemoryDeadLetterSink {
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        let destination = destination.map_or_else(|| dlq_name(letter.meta.origin()), str::to_owned);
        self.broker
            .publish_now(&destination, letter)
            .map_err(|source| SinkError::Publish {
                destination,
                source,
            })
    }
}

/// The in-memory broker's delayed-retry writer: back to the source queue, visible at the due time.
#[derive(Clone, Debug)]
pub struct MemoryRetrySink {
    pub(crate) broker: MemoryBroker,
}

#[async_trait::async_trait]
impl RetrySink for MemoryRetrySink {
    async fn retry_later(&self, copy: Message, delay: Duration) -> Result<(), SinkError> {
        let destination = Arc::clone(&copy.meta.source);
        self.broker
            .publish_delayed(&destination, copy, delay)
            .map_err(|source| SinkError::Publish {
                destination: destination.to_string(),
                source,
            })
    }
}
