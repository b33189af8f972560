//! [`Link`]: the store's connection to Redis. Over TLS it is rebuilt, with
//! the CA and client certificate files read again, after the connection
//! failed, so a rotated certificate is used from the next reconnect on.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{RedisConfig, RedisStoreError};

/// The shared connection of a [`RedisStore`](crate::RedisStore) and its clones.
///
/// A [`ConnectionManager`] reconnects by itself, but with the TLS settings
/// its client was built with. For a `rediss://` URL the link therefore
/// replaces the whole manager after a failure: the next operation builds a
/// new client from the files on disk (one rebuild per failed connection,
/// however many operations saw it fail).
pub(crate) struct Link {
    config: RedisConfig,
    /// Rebuild after a failure (`rediss://`: there are files to read again).
    rebuild: bool,
    state: Mutex<State>,
}

struct State {
    manager: ConnectionManager,
    /// Counts the managers built, so a failure seen on an old one is ignored.
    generation: u64,
    /// The current manager failed: build a new one before the next operation.
    failed: bool,
}

/// A connection to run one operation on, and the manager it came from.
pub(crate) struct Lease {
    pub(crate) connection: ConnectionManager,
    generation: u64,
}

impl Link {
    /// Checks the URL and the TLS files and prepares a lazy connection.
    /// Must be called inside a Tokio runtime.
    pub(crate) fn new(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let manager = manager(&config)?;
        Ok(Link {
            rebuild: config.url.starts_with("rediss://"),
            config,
            state: Mutex::new(State {
                manager,
                generation: 0,
                failed: false,
            }),
        })
    }

    /// The connection for the next operation; over TLS, after a failure, a
    /// new one built from the certificate files as they are now (a file that
    /// cannot be used is this operation's error, and the next one tries
    /// again).
    pub(crate) fn lease(&self) -> Result<Lease, RedisStoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.failed {
            state.manager = manager(&self.config)?;
            state.generation += 1;
            state.failed = false;
            tracing::info!(
                url = %backstop::redact::redact_url(&self.config.url),
                "Redis connection rebuilt with the TLS files read again"
            );
        }
        Ok(Lease {
            connection: state.manager.clone(),
            generation: state.generation,
        })
    }

    /// Reports that an operation on `lease` failed; a connection failure
    /// (`error` none: the operation timed out) makes the next lease rebuild
    /// the connection.
    pub(crate) fn failed(&self, lease: &Lease, error: Option<&redis::RedisError>) {
        let lost = error.is_none_or(|e| e.is_io_error() || e.is_unrecoverable_error());
        if !self.rebuild || !lost {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation == lease.generation {
            state.failed = true;
        }
    }
}

/// A lazy connection manager for `config`, its TLS files read now.
fn manager(config: &RedisConfig) -> Result<ConnectionManager, RedisStoreError> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.operation_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    client(config)?
        .get_connection_manager_lazy(settings)
        .map_err(RedisStoreError::Connect)
}

/// The client for `config.url`: over TLS for `rediss://`, with the CA and
/// client certificate files read now.
fn client(config: &RedisConfig) -> Result<redis::Client, RedisStoreError> {
    let secure = config.url.starts_with("rediss://");
    if !secure {
        if config.tls.ca_file.is_some() || config.tls.has_identity() {
            return Err(RedisStoreError::Tls(
                "TLS files are set but the URL is not rediss://".to_owned(),
            ));
        }
        return redis::Client::open(config.url.as_str()).map_err(RedisStoreError::InvalidUrl);
    }
    #[cfg(feature = "tls")]
    {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| RedisStoreError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let root_cert = config.tls.ca_file.as_deref().map(read).transpose()?;
        let client_tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => {
                backstop::tls::check_client_certificate(cert)
                    .map_err(|e| RedisStoreError::Tls(e.to_string()))?;
                Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                })
            }
            (None, None) => None,
            _ => {
                return Err(RedisStoreError::Tls(
                    "a client certificate needs both a certificate and a key file".to_owned(),
                ));
            }
        };
        redis::Client::build_with_tls(
            config.url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(RedisStoreError::InvalidUrl)
    }
    #[cfg(not(feature = "tls"))]
    Err(RedisStoreError::Tls(
        backstop::tls::TlsError::NotBuilt(config.url.clone()).to_string(),
    ))
}
