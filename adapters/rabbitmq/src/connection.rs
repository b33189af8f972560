//! Connecting: [`ConnectOptions`], and the shared connection that publishers
//! and topology declarations use (reopened on demand after a loss).
//!
//! Each [`RabbitSource`](crate::RabbitSource) opens a connection of its own,
//! as RabbitMQ recommends keeping consumers and publishers on separate
//! connections (flow control blocks publishing connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::error::{ConnectError, redact};
use crate::tls::{self, UrlTls};

/// The URL used when `BACKSTOP_AMQP_URL` is not set: the local broker's default vhost.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL from the `BACKSTOP_AMQP_URL` environment variable, else [`DEFAULT_URL`].
pub fn url_from_env() -> String {
    std::env::var("BACKSTOP_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// How long a close may wait for the broker's answer: a connection (or a
/// consumer's channel and connection) whose close is not answered in time
/// is dropped, so a stopping worker never hangs on it; the broker requeues
/// what was unacked when it sees the connection gone.
pub(crate) const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Runs `closing` (the close of `what`) for at most [`CLOSE_WITHIN`]; past
/// it, gives up and says so: what it closed is dropped.
pub(crate) async fn close_within(what: &str, closing: impl Future<Output = ()>) {
    if tokio::time::timeout(CLOSE_WITHIN, closing).await.is_err() {
        tracing::warn!(
            within = ?CLOSE_WITHIN,
            "closing {what} got no answer in time; its connection is dropped"
        );
    }
}

/// How to connect, reconnect and wait for confirms.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub(crate) connection_name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) confirm_timeout: Duration,
    pub(crate) max_message_size: usize,
}

impl Default for ConnectOptions {
    /// Name `backstop`, 10 s connect timeout, reconnect backoff 100 ms … 5 s,
    /// 30 s confirm timeout, 128 MiB maximum message body.
    fn default() -> Self {
        ConnectOptions {
            connection_name: "backstop".to_owned(),
            connect_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(30),
            max_message_size: crate::limits::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl ConnectOptions {
    /// The connection name shown in the management UI (consumers get `<name>-consumer`).
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// How long one connection attempt may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect backoff bounds: the first wait, doubled up to `max` (jittered).
    #[must_use]
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max.max(initial);
        self
    }

    /// How long a publish waits for the broker's confirm before failing with
    /// [`PublishError::Timeout`](backstop::publish::PublishError::Timeout).
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// The largest message body the broker takes: its `max_message_size`
    /// (default 128 MiB, RabbitMQ 3.x's default; RabbitMQ 4.x defaults to
    /// 16 MiB). A larger body fails with
    /// [`PublishError::TooLarge`](backstop::publish::PublishError::TooLarge) before it
    /// is sent, instead of the broker closing the publishing channel.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// Splits a node list into its URLs: `urls` holds one AMQP URL, or several
/// separated by commas (the nodes of one cluster, tried in turn). A comma
/// starts a new URL only when `amqp://` or `amqps://` follows it (spaces
/// around it are dropped), so a comma inside a URL's query stays there.
///
/// ```
/// let urls = backstop_rabbitmq::node_urls(
///     "amqp://guest:guest@127.0.0.1:5681/%2f, amqp://guest:guest@127.0.0.1:5682/%2f",
/// );
/// assert_eq!(
///     urls,
///     ["amqp://guest:guest@127.0.0.1:5681/%2f", "amqp://guest:guest@127.0.0.1:5682/%2f"]
/// );
/// ```
pub fn node_urls(urls: &str) -> Vec<String> {
    backstop::nodes::split_urls(urls, &["amqp://", "amqps://"])
}

/// One node of the list: its URL and TLS settings.
struct Node {
    url: String,
    tls: UrlTls,
}

/// Opens connections to a broker: one node, or the nodes of a cluster,
/// tried in turn from the one that answered last.
pub(crate) struct Connector {
    nodes: Vec<Node>,
    /// The index of the node to try first (the last one that answered).
    preferred: AtomicUsize,
    pub(crate) options: ConnectOptions,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.redacted_url())
            .field("options", &self.options)
            .finish()
    }
}

impl Connector {
    /// Checks the URLs (scheme, TLS parameters); connects nothing yet.
    /// `url` may list several nodes (see [`node_urls`]).
    pub(crate) fn new(url: String, options: ConnectOptions) -> Result<Self, ConnectError> {
        let urls = node_urls(&url);
        if urls.is_empty() {
            return Err(ConnectError::InvalidUrl {
                url: redact(&url),
                reason: "no AMQP URL given".to_owned(),
            });
        }
        let nodes = urls
            .into_iter()
            .map(|url| {
                let tls = tls::parse(&url).map_err(|reason| ConnectError::InvalidUrl {
                    url: redact(&url),
                    reason,
                })?;
                Ok(Node { url, tls })
            })
            .collect::<Result<Vec<_>, ConnectError>>()?;
        Ok(Connector {
            nodes,
            preferred: AtomicUsize::new(0),
            options,
        })
    }

    /// The URLs with the passwords hidden, comma-separated.
    pub(crate) fn redacted_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| redact(&n.url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects to the first node that answers, starting from the one that
    /// answered last; each attempt is bounded by the connect timeout. Fails
    /// with the last node's error when none answers. Over TLS, the
    /// certificate files are read again for each attempt.
    pub(crate) async fn connect(&self, role: &str) -> Result<Connection, ConnectError> {
        let count = self.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut last_error = None;
        for step in 0..count {
            let index = (first + step) % count;
            match self.connect_node(&self.nodes[index], role).await {
                Ok(connection) => {
                    if index != first {
                        tracing::warn!(
                            url = %redact(&self.nodes[index].url),
                            "RabbitMQ: failed over to another node"
                        );
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(connection);
                }
                Err(error) => {
                    // A malformed URL does not get better on another node.
                    if matches!(error, ConnectError::InvalidUrl { .. }) {
                        return Err(error);
                    }
                    if count > 1 {
                        tracing::warn!(%error, "RabbitMQ node unreachable; trying the next");
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::InvalidUrl {
            url: String::new(),
            reason: "no AMQP URL given".to_owned(),
        }))
    }

    /// One connection attempt to `node`, bounded by the connect timeout.
    async fn connect_node(&self, node: &Node, role: &str) -> Result<Connection, ConnectError> {
        let shown = redact(&node.url);
        let name = format!("{}-{role}", self.options.connection_name);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        // Parsed here, not by lapin: its parse error quotes the whole URL.
        let uri: AMQPUri = node
            .url
            .parse()
            .map_err(|reason: String| ConnectError::InvalidUrl {
                url: shown.clone(),
                reason: backstop::redact::redact_text(&reason.replace(&node.url, &shown)),
            })?;
        let attempt = async {
            match &node.tls.options {
                None => Ok(Connection::connect_uri(uri, properties).await),
                #[cfg(feature = "tls")]
                Some(_) => tls::connect(uri, &node.tls, properties).await,
                #[cfg(not(feature = "tls"))]
                Some(_) => Err(tls::not_built(&shown)),
            }
        };
        match tokio::time::timeout(self.options.connect_timeout, attempt).await {
            Ok(Ok(Ok(connection))) => Ok(connection),
            Ok(Ok(Err(source))) => Err(ConnectError::connect(shown, source)),
            Ok(Err(source)) => Err(ConnectError::Tls { url: shown, source }),
            Err(_) => Err(ConnectError::Timeout {
                url: shown,
                timeout: self.options.connect_timeout,
            }),
        }
    }
}

/// A connection shared by publishers and declarations, reopened when it died.
#[derive(Debug)]
pub(crate) struct SharedConnection {
    pub(crate) connector: Arc<Connector>,
    role: &'static str,
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl SharedConnection {
    pub(crate) fn new(connector: Arc<Connector>, role: &'static str) -> Self {
        SharedConnection {
            connector,
            role,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The live connection, reconnecting (one attempt) if it is gone.
    pub(crate) async fn get(&self) -> Result<Arc<Connection>, ConnectError> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.status().connected() {
                return Ok(Arc::clone(connection));
            }
            tracing::info!(url = %self.connector.redacted_url(), "RabbitMQ connection lost; reconnecting");
        }
        let connection = Arc::new(self.connector.connect(self.role).await?);
        *current = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, ConnectError> {
        let connection = self.get().await?;
        match connection.create_channel().await {
            Ok(channel) => Ok(channel),
            // The connection may have died between the check and the call: one more try.
            Err(_) if !connection.status().connected() => self
                .get()
                .await?
                .create_channel()
                .await
                .map_err(ConnectError::Channel),
            Err(error) => Err(ConnectError::Channel(error)),
        }
    }

    /// Closes the connection (a later use reopens it), waiting at most
    /// [`CLOSE_WITHIN`] for the broker's answer.
    pub(crate) async fn close(&self) {
        let closing = async {
            let taken = self.current.lock().await.take();
            if let Some(connection) = taken
                && connection.status().connected()
                && let Err(error) = connection.close(200, "OK".into()).await
            {
                tracing::debug!(%error, "closing the RabbitMQ connection failed");
            }
        };
        close_within("the RabbitMQ connection", closing).await;
    }
}

#[cfg(test)]
mod tests;
