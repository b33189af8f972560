//! The adapter's own errors: connecting, subscribing and declaring topology.
//!
//! Publishing and settling use backstop's errors ([`backstop::publish::PublishError`],
//! [`backstop::error::AckError`], [`backstop::error::SinkError`], [`backstop::runner::SourceError`]).

use std::time::Duration;

/// The broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection attempt failed (refused, bad credentials, bad vhost, bad URL).
    #[error(
        "cannot connect to RabbitMQ at {url}: {source} (check the URL, the credentials and that the broker is running)"
    )]
    Connect {
        /// The URL, with the password hidden.
        url: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The URL is malformed, or has a TLS parameter it cannot use.
    #[error(
        "{url} is not a usable AMQP URL: {reason} (expected amqp[s]://user:password@host:port/vhost, with the vhost and any special character of the password percent-encoded)"
    )]
    InvalidUrl {
        /// The URL, with the password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings of the URL cannot be used (a certificate file is
    /// missing or unreadable, the build has no TLS, …).
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Tls {
        /// The URL, with the password hidden.
        url: String,
        /// What is wrong with the TLS settings.
        #[source]
        source: backstop::tls::TlsError,
    },
    /// The TLS handshake failed: the reason says which side refused what.
    #[error("TLS handshake with RabbitMQ at {url} failed: {reason}")]
    Handshake {
        /// The URL, with the password hidden.
        url: String,
        /// The failure in an operator's words.
        reason: String,
        /// lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The server answered something that is not AMQP, or hung up during
    /// the handshake: most likely a TLS port reached with an `amqp://` URL.
    #[error(
        "RabbitMQ at {url} broke off the AMQP handshake ({source}); if this port expects TLS, use an amqps:// URL"
    )]
    NotAmqp {
        /// The URL, with the password hidden.
        url: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not finish the handshake in time.
    #[error(
        "RabbitMQ at {url} did not answer within {timeout:?} (is the broker starting or overloaded?)"
    )]
    Timeout {
        /// The URL, with the password hidden.
        url: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The connection is up but a channel could not be opened on it.
    #[error("cannot open a channel on the RabbitMQ connection: {0}")]
    Channel(#[source] lapin::Error),
}

impl ConnectError {
    /// A failed connection attempt, explained as a TLS failure when it is one.
    pub(crate) fn connect(url: String, source: lapin::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(reason) = backstop::tls::explain(&source) {
            return ConnectError::Handshake {
                url,
                reason,
                source: Box::new(source),
            };
        }
        let broken_off = match source.kind() {
            lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => true,
            lapin::ErrorKind::IOError(io) => matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        };
        if url.starts_with("amqp://") && broken_off {
            return ConnectError::NotAmqp { url, source };
        }
        // Under TLS 1.3 a broker that refuses our client certificate does so
        // after the client finished its handshake; its alert may be lost to
        // the connection reset that follows it.
        if url.starts_with("amqps://") && url.contains("certfile=") && broken_off {
            return ConnectError::Handshake {
                url,
                reason: "the broker hung up right after the handshake: it most likely refused \
                         our client certificate (not signed by a CA it trusts?)"
                    .to_owned(),
                source: Box::new(source),
            };
        }
        ConnectError::Connect { url, source }
    }
}

/// A consumer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The queue does not exist: declare it first (see [`Topology`](crate::Topology)).
    #[error("queue {queue:?} does not exist: declare it first (RabbitMq::declare with a Topology)")]
    QueueNotFound {
        /// The queue's name.
        queue: String,
    },
    /// The broker refused to set the prefetch or to start the consumer.
    #[error("cannot consume from queue {queue:?}: {source}")]
    Broker {
        /// The queue's name.
        queue: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

/// A topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A queue or exchange exists with other arguments than the ones declared.
    #[error(
        "{name:?} already exists with different settings: {reason} (delete it or declare it as it is)"
    )]
    Mismatch {
        /// The queue or exchange.
        name: String,
        /// The broker's explanation.
        reason: String,
    },
    /// A queue to adopt ([`Topology::adopt`](crate::Topology::adopt)) does not exist.
    #[error("queue {queue:?} does not exist: an adopted queue must be declared by its owner first")]
    AdoptedQueueMissing {
        /// The queue's name.
        queue: String,
    },
    /// Delay tiers need quorum queues (classic queues have no at-least-once dead-lettering).
    #[error("queue {queue:?} is a classic queue: broker-delayed retry tiers need Topology::quorum")]
    TiersNeedQuorum {
        /// The queue's name.
        queue: String,
    },
    /// The broker's delivery limit must be above backstop's maximum attempts.
    #[error(
        "delivery limit {delivery_limit} of queue {queue:?} must be above the {max_attempts} attempts backstop makes"
    )]
    DeliveryLimitTooLow {
        /// The queue's name.
        queue: String,
        /// The configured `x-delivery-limit`.
        delivery_limit: u32,
        /// Backstop's maximum attempts.
        max_attempts: u32,
    },
    /// A delay tier is zero or does not fit the broker's TTL.
    #[error(
        "retry tier {delay:?} of queue {queue:?} is invalid: a tier's delay must be between 1 ms and 2^32 ms"
    )]
    InvalidTier {
        /// The queue's name.
        queue: String,
        /// The tier's delay.
        delay: Duration,
    },
    /// A name is longer than AMQP's 255 bytes.
    #[error("name {name:?} is longer than the 255 bytes AMQP allows")]
    NameTooLong {
        /// The name.
        name: String,
    },
    /// Another broker failure.
    #[error("declaring {name:?} failed: {source}")]
    Broker {
        /// The queue or exchange.
        name: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

/// A message that cannot be written as AMQP.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A header name is longer than AMQP's 255-byte short string.
    #[error("header name {0:?} is longer than the 255 bytes AMQP allows")]
    HeaderNameTooLong(String),
    /// A destination part (exchange or routing key) is longer than 255 bytes.
    #[error("destination {0:?} is longer than the 255 bytes AMQP allows")]
    DestinationTooLong(String),
}

/// The AMQP reply code and text of a broker-side channel or connection close, if `error` is one.
pub(crate) fn amqp_reply(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().to_string()))
        }
        _ => None,
    }
}

/// AMQP `NOT_FOUND`.
pub(crate) const NOT_FOUND: u16 = 404;
/// AMQP `PRECONDITION_FAILED`.
pub(crate) const PRECONDITION_FAILED: u16 = 406;
/// AMQP `ACCESS_REFUSED`.
pub(crate) const ACCESS_REFUSED: u16 = 403;

/// `url` with the password replaced by `***` (see [`backstop::redact::redact_url`]).
pub fn redact(url: &str) -> String {
    backstop::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact("amqp://u:p@ss@h/"), "amqp://u:***@h/");
    }
}
