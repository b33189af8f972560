//! The rustls side of [`TlsOptions`]: the provider, the trusted roots, the
//! client identity and the `ClientConfig`, each read from the files now.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::verifiers::{AcceptAnyServer, AnyName};
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

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
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
