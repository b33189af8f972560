//! Connecting: [`ConnectOptions`], and the shared connection that publishers
//! and topology declarations use (reopened on demand after a loss).
//!
//! Each [`RabbitSource`](crate::RabbitSource) opens a connection of its own,
//! as RabbitMQ recommends keeping consumers and publishers on separate
//! connections (flow control blocks publishing connections).

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};

use crate::error::{ConnectError, redact};

/// The URL used when `BACKSTOP_AMQP_URL` is not set: the local broker's default vhost.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL from the `BACKSTOP_AMQP_URL` environment variable, else [`DEFAULT_URL`].
pub fn url_from_env() -> String {
    std::env::var("BACKSTOP_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// How to connect, reconnect and wait for confirms.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub(crate) connection_name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) confirm_timeout: Duration,
}

impl Default for ConnectOptions {
    /// Name `backstop`, 10 s connect timeout, reconnect backoff 100 ms … 5 s,
    /// 30 s confirm timeout.
    fn default() -> Self {
        ConnectOptions {
            connection_name: "backstop".to_owned(),
            connect_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(30),
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
    /// [`PublishError::Timeout`](backstop::PublishError::Timeout).
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }
}

/// Opens connections to one broker.
#[derive(Debug)]
pub(crate) struct Connector {
    url: String,
    pub(crate) options: ConnectOptions,
}

impl Connector {
    pub(crate) fn new(url: String, options: ConnectOptions) -> Self {
        Connector { url, options }
    }

    /// The URL with the password hidden.
    pub(crate) fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// One connection attempt, bounded by the connect timeout.
    pub(crate) async fn connect(&self, role: &str) -> Result<Connection, ConnectError> {
        let name = format!("{}-{role}", self.options.connection_name);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(
            self.options.connect_timeout,
            Connection::connect(&self.url, properties),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(source)) => Err(ConnectError::Connect {
                url: self.redacted_url(),
                source,
            }),
            Err(_) => Err(ConnectError::Timeout {
                url: self.redacted_url(),
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

    /// Closes the connection (a later use reopens it).
    pub(crate) async fn close(&self) {
        let taken = self.current.lock().await.take();
        if let Some(connection) = taken
            && connection.status().connected()
            && let Err(error) = connection.close(200, "OK".into()).await
        {
            tracing::debug!(%error, "closing the RabbitMQ connection failed");
        }
    }
}
