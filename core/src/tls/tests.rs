//! Explaining TLS failures, and naming a half identity or a missing file.

use super::*;

#[test]
fn explains_tls_failures_inside_io_errors() {
    use rustls::{CertificateError, Error};
    let wrapped = std::io::Error::other(Error::InvalidCertificate(CertificateError::UnknownIssuer));
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
