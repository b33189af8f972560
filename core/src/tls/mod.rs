//! TLS client settings shared by the adapters: which CAs to trust, which
//! client certificate to present, whether to verify the server.
//!
//! [`TlsOptions`] is plain data, always compiled, so an adapter can parse its
//! URL and say clearly when TLS was asked for but the build has none. With
//! the `tls` feature, `TlsOptions::client_config` builds a rustls
//! `ClientConfig` (ring provider) by reading the files **at that moment**:
//! adapters call it on every (re)connect, so a rotated certificate or CA file
//! is picked up without a restart.

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

#[cfg(feature = "tls")]
mod build {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

    use super::{TlsError, TlsOptions, Verify};

    /// The crypto provider of every backstop TLS client: ring.
    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    }

    fn certificates(
        what: &'static str,
        path: &Path,
    ) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = read(what, path)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::Parse {
                what,
                path: path.to_owned(),
                expected: "certificate",
            });
        }
        Ok(certs)
    }

    /// Fails when the certificate `der` (read from `path`) is expired or not yet valid.
    fn check_dates(path: &Path, der: &[u8]) -> Result<(), TlsError> {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Ok(()); // rustls reports what it cannot use
        };
        let validity = cert.validity();
        let now = x509_parser::time::ASN1Time::now();
        let state = if now > validity.not_after {
            "has expired"
        } else if now < validity.not_before {
            "is not valid yet"
        } else {
            return Ok(());
        };
        Err(TlsError::ClientCertificateDates {
            path: path.to_owned(),
            state,
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        })
    }

    /// Checks that the client certificate in the PEM file `path` is within
    /// its validity period (for clients that hand the file to another TLS
    /// library, such as librdkafka).
    pub fn check_client_certificate(path: &Path) -> Result<(), TlsError> {
        let chain = certificates("client certificate", path)?;
        check_dates(path, &chain[0])
    }

    impl TlsOptions {
        /// The trusted roots: the CA file's certificates, else the system's.
        pub fn root_store(&self) -> Result<RootCertStore, TlsError> {
            let mut roots = RootCertStore::empty();
            match &self.ca_file {
                Some(path) => {
                    let (added, _) = roots.add_parsable_certificates(certificates("CA", path)?);
                    if added == 0 {
                        return Err(TlsError::Parse {
                            what: "CA",
                            path: path.clone(),
                            expected: "CA certificate",
                        });
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(TlsError::NoRoots);
                    }
                }
            }
            Ok(roots)
        }

        /// The client certificate chain and key, when configured.
        #[allow(clippy::type_complexity)]
        pub fn identity(
            &self,
        ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError>
        {
            match (&self.cert_file, &self.key_file) {
                (None, None) => Ok(None),
                (Some(_), None) => Err(TlsError::IncompleteIdentity {
                    given: "certificate file",
                }),
                (None, Some(_)) => Err(TlsError::IncompleteIdentity { given: "key file" }),
                (Some(cert), Some(key)) => {
                    let chain = certificates("client certificate", cert)?;
                    check_dates(cert, &chain[0])?;
                    let pem = read("client key", key)?;
                    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Parse {
                        what: "client key",
                        path: key.clone(),
                        expected: "private key",
                    })?;
                    Ok(Some((chain, key)))
                }
            }
        }

        /// A rustls client configuration (ring provider), reading every
        /// file now.
        pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            let builder = match self.verify {
                Verify::Peer => builder.with_root_certificates(self.root_store()?),
                Verify::CaOnly => {
                    let chain = WebPkiServerVerifier::builder_with_provider(
                        Arc::new(self.root_store()?),
                        provider(),
                    )
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyName(chain)))
                }
                Verify::None => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider()))),
            };
            match self.identity()? {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Config(e.to_string())),
                None => Ok(builder.with_no_client_auth()),
            }
        }

        /// The name to verify and send as SNI: `server_name` if set, else `host`.
        pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
            let name = self.server_name.as_deref().unwrap_or(host);
            ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
        }
    }

    /// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
    #[derive(Debug)]
    struct AnyName(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    NotValidForName | NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// `verify_none`: accepts any certificate but still checks the handshake
    /// signatures (so the session keys belong to whoever holds the key).
    #[derive(Debug)]
    struct AcceptAnyServer(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(feature = "tls")]
pub use self::build::{check_client_certificate, provider};

/// Re-export of the rustls version the adapters build on.
#[cfg(feature = "tls")]
pub use rustls;

/// Explains a TLS failure found anywhere in an error's source chain in
/// words an operator can act on (unknown CA, expired certificate, name
/// mismatch, a plain-text peer, …); `None` when the chain holds no TLS error.
#[cfg(feature = "tls")]
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error};
    /// The rustls error `e` is, or wraps in (possibly nested) I/O errors,
    /// which hide their inner error from `source()` (hyper-rustls wraps
    /// tokio-rustls' I/O error in another one), or in an `Arc` (the redis
    /// client keeps its cause in one).
    fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
        let mut e = e;
        loop {
            if let Some(tls) = e.downcast_ref::<Error>() {
                return Some(tls);
            }
            e = match e.downcast_ref::<Shared>() {
                Some(shared) => &**shared,
                None => e.downcast_ref::<std::io::Error>()?.get_ref()?,
            };
        }
    }
    let mut current = Some(error);
    while let Some(e) = current {
        let tls = rustls_error(e);
        if let Some(tls) = tls {
            let text = match tls {
                Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    "the server's certificate is not signed by a trusted CA (wrong CA file?)".to_owned()
                }
                Error::InvalidCertificate(CertificateError::Expired)
                | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
                    "the server's certificate has expired".to_owned()
                }
                Error::InvalidCertificate(CertificateError::NotValidForName)
                | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
                    "the server's certificate is not valid for this host name (set the server name?)"
                        .to_owned()
                }
                Error::AlertReceived(AlertDescription::CertificateExpired) => {
                    "the server refused our client certificate: it has expired".to_owned()
                }
                Error::AlertReceived(
                    AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateRequired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::AccessDenied,
                ) => format!("the server refused our client certificate ({tls})"),
                Error::InvalidMessage(_) => {
                    "the server did not answer with TLS (a plain-text port?)".to_owned()
                }
                other => format!("TLS failed: {other}"),
            };
            return Some(text);
        }
        current = e.source();
    }
    None
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn explains_tls_failures_inside_io_errors() {
        use rustls::{CertificateError, Error};
        let wrapped =
            std::io::Error::other(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let text = explain(&wrapped).expect("a TLS error");
        assert!(text.contains("not signed by a trusted CA"), "{text}");
        // hyper-rustls (reqwest's https) wraps tokio-rustls' I/O error in
        // another one, whose `source()` skips the inner error.
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        let text = explain(&nested).expect("a TLS error two I/O errors deep");
        assert!(text.contains("not signed by a trusted CA"), "{text}");
        let shared: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(std::io::Error::other(Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            )));
        let text = explain(&shared).expect("a TLS error behind an Arc");
        assert!(text.contains("refused our client certificate"), "{text}");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(explain(&plain), None);
    }

    #[test]
    fn half_an_identity_and_missing_files_are_named() {
        let half = TlsOptions {
            cert_file: Some("/c.pem".into()),
            ..TlsOptions::default()
        };
        let error = half.client_config().expect_err("incomplete");
        assert!(error.to_string().contains("key file"), "{error}");
        let missing = TlsOptions {
            ca_file: Some("/no/such/ca.pem".into()),
            ..TlsOptions::default()
        };
        let error = missing.client_config().expect_err("missing");
        assert!(error.to_string().contains("/no/such/ca.pem"), "{error}");
        let lenient = TlsOptions {
            verify: Verify::None,
            ..TlsOptions::default()
        };
        assert!(lenient.client_config().is_ok());
        assert!(lenient.server_name("not a name!").is_err());
    }
}
