//! [`KafkaPublisher`]: confirmed publishing with an idempotent producer.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use backstop::Message;
use backstop::publish::{PublishError, Publisher};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::{Error, KafkaConfig, record};

/// How long dropping the last handle waits for queued messages.
const FLUSH_ON_DROP: Duration = Duration::from_secs(5);

/// Publishes to Kafka and resolves only on the broker's delivery report.
///
/// The producer is idempotent (`enable.idempotence=true`, `acks=all`), never
/// creates topics (`allow.auto.create.topics=false`) and gives up after
/// `message.timeout.ms` ([`KafkaConfig::message_timeout`]). Headers are
/// written as record headers with `x-backstop-message-id`, in order and
/// byte for byte (nulls and repeated names included); the key is kept,
/// so a copy lands on the partition of its key. Cheap to clone; the last
/// clone flushes on drop, and [`KafkaPublisher::close`] flushes explicitly.
#[derive(Clone, Debug)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    producer: RwLock<Arc<FutureProducer>>,
    config: ClientConfig,
    message_timeout: Duration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("message_timeout", &self.message_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher for `config.brokers`.
    pub fn new(config: &KafkaConfig) -> Result<Self, Error> {
        let client = config.producer_config();
        let producer: FutureProducer = client.create().map_err(Error::Config)?;
        Ok(KafkaPublisher {
            inner: Arc::new(Inner {
                producer: RwLock::new(Arc::new(producer)),
                config: client,
                message_timeout: config.message_timeout,
            }),
        })
    }

    /// How long a publish may wait for its delivery report.
    pub fn message_timeout(&self) -> Duration {
        self.inner.message_timeout
    }

    fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(
            &self
                .inner
                .producer
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// An idempotent producer that failed fatally is unusable: replace it.
    fn recover(&self, failed: &Arc<FutureProducer>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut slot = self
            .inner
            .producer
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot, failed) {
            return;
        }
        match self.inner.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(%code, %reason, "producer failed fatally; replaced it with a new one");
                *slot = Arc::new(fresh);
            }
            Err(error) => {
                tracing::error!(%error, "producer failed fatally and could not be recreated")
            }
        }
    }

    /// Waits up to `timeout` for every queued message's delivery report.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| PublishError::Unavailable(Box::new(e)))?
            .map_err(|e| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::OperationTimedOut) => PublishError::Timeout(timeout),
                _ => PublishError::Unavailable(Box::new(e)),
            })
    }

    /// Flushes queued messages, waiting up to the message timeout.
    pub async fn close(&self) -> Result<(), PublishError> {
        self.flush(self.inner.message_timeout).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
        if producer.in_flight_count() > 0
            && let Err(error) = producer.flush(FLUSH_ON_DROP)
        {
            tracing::warn!(%error, "messages still queued when the publisher was dropped are lost");
        }
    }
}

/// Maps a failed delivery to the broker-neutral error.
pub(crate) fn publish_error(
    destination: &str,
    size: usize,
    error: KafkaError,
    timeout: Duration,
) -> PublishError {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            PublishError::MissingDestination(destination.to_owned())
        }
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => PublishError::TooLarge { size },
        Some(C::MessageTimedOut | C::RequestTimedOut) => PublishError::Timeout(timeout),
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            PublishError::Unauthorized(destination.to_owned())
        }
        Some(
            C::PolicyViolation
            | C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidRequiredAcks
            | C::InvalidTopic,
        ) => PublishError::Nacked,
        _ => PublishError::Unavailable(Box::new(error)),
    }
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        let producer = self.producer();
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(destination)
            .payload(&message.payload[..])
            .headers(record::record_headers(message));
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        let timeout = self.inner.message_timeout;
        match producer.send(record, Timeout::After(timeout)).await {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                self.recover(&producer);
                Err(publish_error(
                    destination,
                    message.payload.len(),
                    error,
                    timeout,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(c)
    }

    #[test]
    fn delivery_errors_map_to_what_the_caller_can_do() {
        let t = Duration::from_secs(3);
        assert!(matches!(
            publish_error("t", 1, code(RDKafkaErrorCode::UnknownTopicOrPartition), t),
            PublishError::MissingDestination(d) if d == "t"
        ));
        assert!(matches!(
            publish_error("t", 1, code(RDKafkaErrorCode::UnknownTopic), t),
            PublishError::MissingDestination(_)
        ));
        assert!(matches!(
            publish_error("t", 9, code(RDKafkaErrorCode::MessageSizeTooLarge), t),
            PublishError::TooLarge { size: 9 }
        ));
        assert!(matches!(
            publish_error("t", 1, code(RDKafkaErrorCode::MessageTimedOut), t),
            PublishError::Timeout(d) if d == t
        ));
        assert!(matches!(
            publish_error("t", 1, code(RDKafkaErrorCode::TopicAuthorizationFailed), t),
            PublishError::Unauthorized(d) if d == "t"
        ));
        assert!(matches!(
            publish_error("t", 1, code(RDKafkaErrorCode::AllBrokersDown), t),
            PublishError::Unavailable(_)
        ));
    }
}
