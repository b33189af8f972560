//! [`CliError`]: what went wrong, in one line a user can act on.

use crate::redact::redact;

/// A failure of a `backstop` command. Its message is one line that says what to
/// check; URLs in it never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The RabbitMQ broker could not be reached or refused the login.
    #[error("{0}")]
    RabbitConnect(String),
    /// A queue does not exist.
    #[error("queue {0:?} does not exist (check --queue/--dlq and --amqp's vhost)")]
    MissingQueue(String),
    /// A Kafka topic does not exist.
    #[error("topic {0:?} does not exist (check --topic/--group/--dlq and --kafka)")]
    MissingTopic(String),
    /// A Kafka request failed.
    #[error("Kafka request failed ({what}): {reason} (check --kafka and that the brokers run)")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        reason: String,
    },
    /// A broker request failed after connecting.
    #[error("{what}: {reason}")]
    Broker {
        /// What was being done.
        what: String,
        /// The broker's answer.
        reason: String,
    },
    /// The management HTTP API failed.
    #[error("RabbitMQ management API at {url}: {reason}")]
    Http {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A message selected for replay could not be republished.
    #[error(
        "republishing message {id:?} to {destination:?} failed: {reason}; it stays in the DLQ, rerun to resume"
    )]
    Republish {
        /// The message id.
        id: String,
        /// Where it was going.
        destination: String,
        /// Why it failed.
        reason: String,
    },
    /// A command line value is not usable.
    #[error("{0}")]
    Usage(String),
    /// A message id given to `show` is not in the DLQ.
    #[error("message {0:?} is not in the DLQ")]
    NotFound(String),
    /// The consumer group still has members; offsets cannot be reset.
    #[error(
        "consumer group {group:?} has {members} active member(s): stop its workers first, then rerun (offsets can only be reset on an empty group)"
    )]
    GroupActive {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The on-disk index a DLQ command keeps while it walks (see
    /// [`crate::dlq::scratch`]) failed.
    #[error(
        "the temporary index of this command failed: {0} (check the free space of the temporary directory, TMPDIR)"
    )]
    Scratch(String),
    /// The DLQ console failed (see [`crate::console::ConsoleError`]).
    #[error(transparent)]
    Console(Box<crate::console::ConsoleError>),
    /// A publisher's spool file could not be read.
    #[error("{0} (check the path given to `backstop spool`)")]
    Spool(#[source] backstop_spool::SpoolError),
    /// The outbox's database could not be read or written (the URL redacted).
    #[error(
        "the outbox could not be read: {0} (check --url, --table, and that the table was migrated)"
    )]
    Outbox(String),
}

impl CliError {
    /// A RabbitMQ connection failure for `url` (redacted here).
    pub fn rabbit_connect(url: &str, reason: impl std::fmt::Display) -> Self {
        let text = reason.to_string().replace(url, &redact(url));
        CliError::RabbitConnect(redact_all(&text))
    }

    /// A Kafka failure while doing `what`.
    pub fn kafka(
        what: impl Into<String>,
    ) -> impl FnOnce(backstop_kafka::rdkafka::error::KafkaError) -> Self {
        let what = what.into();
        move |e| CliError::Kafka {
            what,
            reason: e.to_string(),
        }
    }

    /// A broker failure while doing `what`.
    pub fn broker(what: impl Into<String>) -> impl FnOnce(lapin_error::Error) -> Self {
        let what = what.into();
        move |e| CliError::Broker {
            what,
            reason: redact_all(&e.to_string()),
        }
    }
}

/// A background Kafka read that did not finish (it panicked): what
/// [`backstop_kafka::blocking`] returns for it.
impl From<tokio::task::JoinError> for CliError {
    fn from(error: tokio::task::JoinError) -> Self {
        CliError::Kafka {
            what: "a background read".into(),
            reason: error.to_string(),
        }
    }
}

mod lapin_error {
    pub(crate) use backstop_rabbitmq::lapin::Error;
}

pub use crate::redact::redact_all;
