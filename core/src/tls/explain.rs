//! [`explain`]: a TLS failure in an error's source chain, in words an
//! operator can act on.

/// Explains a TLS failure found anywhere in an error's source chain in
/// words an operator can act on (unknown CA, expired certificate, name
/// mismatch, a plain-text peer, …); `None` when the chain holds no TLS error.
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
