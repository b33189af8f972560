//! [`Error`]: what can go wrong setting up or running the Kafka adapter.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A failure of the Kafka adapter outside the message path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the client configuration (a misspelt or invalid property).
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[source] KafkaError),
    /// The broker could not be reached or answered with an error.
    #[error("Kafka request failed ({what}): {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// Creating or changing a topic failed.
    #[error(
        "topic {topic:?}: {what} failed with {code}; check the broker's limits (replication factor, partitions) and permissions"
    )]
    Topic {
        /// The topic.
        topic: String,
        /// What was attempted.
        what: &'static str,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// Ordered retries were asked for without exactly-once mode: parking a
    /// key is only safe in the transaction that moves the offsets.
    #[error(
        "ordered retries need exactly-once mode: set KafkaConfig::exactly_once (Kafka::exactly_once) or turn KafkaConfig::ordered_retries off"
    )]
    OrderedRetriesNeedTransactions,
    /// A topic did not show up in the cluster metadata in time.
    #[error(
        "topic {0:?} is not in the cluster metadata; create it first (Kafka::ensure_topics) or check the broker address"
    )]
    MissingTopic(String),
    /// A topic accepts records whose DLQ and retry copies the producer could not send.
    #[error(
        "topic {topic:?} accepts records of {accepts} bytes, but with backstop's headers their dead letters would exceed the producer's limit of {producer} bytes; raise KafkaConfig::max_message_bytes or lower the topic's max.message.bytes"
    )]
    TooLarge {
        /// The source topic.
        topic: String,
        /// Its `max.message.bytes`.
        accepts: usize,
        /// The producer's `message.max.bytes` ([`KafkaConfig::max_message_bytes`](crate::KafkaConfig::max_message_bytes)).
        producer: usize,
    },
    /// The cluster could not be reached with the configured settings: the
    /// reason is librdkafka's (TLS handshake, SASL authentication, …; it
    /// names no secret).
    #[error("cannot reach Kafka at {brokers}: {reason}")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's explanation.
        reason: String,
    },
    /// The consumer's poll thread could not be started.
    #[error("could not start the consumer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A blocking call that did not finish (it panicked): see [`blocking`](crate::blocking()).
impl From<tokio::task::JoinError> for Error {
    fn from(error: tokio::task::JoinError) -> Self {
        Error::Thread(std::io::Error::other(error))
    }
}

impl Error {
    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }
}
