//! TLS client settings shared by the adapters: which CAs to trust, which
//! client certificate to present, whether to verify the server.
//!
//! [`TlsOptions`] is plain data, always compiled, so an adapter can parse its
//! URL and say clearly when TLS was asked for but the build has none. With
//! the `tls` feature, `TlsOptions::client_config` builds a rustls
//! `ClientConfig` (ring provider) by reading the files **at that moment**:
//! adapters call it on every (re)connect, so a rotated certificate or CA file
//! is picked up without a restart.

#[cfg(feature = "tls")]
mod config;
#[cfg(feature = "tls")]
mod explain;
#[cfg(all(test, feature = "tls"))]
mod tests;
#[cfg(feature = "tls")]
mod verifiers;

#[cfg(feature = "tls")]
pub use self::config::{check_client_certificate, provider};
#[cfg(feature = "tls")]
pub use self::explain::explain;
/// Re-export of the rustls version the adapters build on.
#[cfg(feature = "tls")]
pub use rustls;

use std::path::PathBuf;

/// How a TLS client checks the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Verify the server's certificate chain and name (the default).
    #[default]
    Peer,
    /// Verify the chain but not the name (PostgreSQL's `verify-ca`).
    CaOnly,
    /// Accept any server certificate (encryption without authentication;
    /// PostgreSQL's `require`, RabbitMQ's `verify_none`: anyone on the path
    /// can impersonate the server).
    None,
}

/// Where a TLS client finds its trust anchors and its own certificate.
///
/// With no `ca_file`, the operating system's root certificates are trusted;
/// with one, only the certificates in it. `cert_file` and `key_file` (PEM)
/// present a client certificate (mutual TLS); they go together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Whether the server is verified.
    pub verify: Verify,
    /// The name the server's certificate must carry (and the SNI sent),
    /// when it differs from the host connected to.
    pub server_name: Option<String>,
}

/// A TLS setting could not be used. Names files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        /// `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but holds no usable PEM certificate or key.
    #[error("the TLS {what} file {path} holds no usable PEM {expected}")]
    Parse {
        /// `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// Only one of the client certificate and key was given.
    #[error(
        "a client certificate needs both a certificate file and a key file (only the {given} was given)"
    )]
    IncompleteIdentity {
        /// The half that was given.
        given: &'static str,
    },
    /// Our own client certificate is outside its validity period: the
    /// server would refuse it (often with a vaguer alert).
    #[error("the client certificate {path} {state} (valid {not_before} to {not_after}); renew it")]
    ClientCertificateDates {
        /// The file.
        path: PathBuf,
        /// `has expired` or `is not valid yet`.
        state: &'static str,
        /// Start of validity (RFC 2822).
        not_before: String,
        /// End of validity (RFC 2822).
        not_after: String,
    },
    /// No CA file was given and the system has no root certificates.
    #[error(
        "no CA file given and no system root certificates found (install ca-certificates or name a CA file)"
    )]
    NoRoots,
    /// The server name is not a valid DNS name or IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// rustls refused the settings (the client key does not match its certificate, …).
    #[error("the TLS settings were refused: {0}")]
    Config(String),
    /// TLS was asked for but the program was built without TLS support.
    #[error(
        "{0} asks for TLS, but this build has no TLS support (build with the `tls` feature of the adapter)"
    )]
    NotBuilt(String),
}

impl TlsOptions {
    /// True when any client certificate setting is present.
    pub fn has_identity(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}
