//! The RabbitMQ management API client: JSON over HTTP with `reqwest`.
//!
//! Credentials come from the URL's user info (`http://user:password@host:15672`),
//! percent-decoded, and are sent as basic auth; the URL is shown only with
//! the password hidden. Every request is bounded: 10 s to connect, 30 s in
//! all, and at most 64 MiB of response body. `https://` verifies the server
//! against the system roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override
//! them, as for curl and OpenSSL) with rustls and the ring provider.

use std::time::Duration;

use crate::error::CliError;
use crate::redact::redact;

/// The most one request may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one request may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body accepted.
pub const MAX_BODY: usize = 64 << 20;

/// A management API endpoint: its base URL without credentials, and the
/// percent-decoded credentials.
struct Endpoint {
    base: url::Url,
    shown: String,
    user: Option<(String, String)>,
}

impl Endpoint {
    fn parse(base: &str) -> Result<Self, CliError> {
        let shown = redact(base);
        let err = |reason: String| CliError::Http {
            url: shown.clone(),
            reason,
        };
        let mut url = url::Url::parse(base).map_err(|e| {
            err(format!(
                "not a URL ({e}); expected http://user:password@host:15672"
            ))
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(err(
                "only http:// and https:// URLs are supported (e.g. http://guest:guest@127.0.0.1:15672)"
                    .into(),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err("the user or password is not valid UTF-8 once decoded".into()))
        };
        let user = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        // Neither call can fail on an http(s):// URL.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Endpoint {
            base: url,
            shown,
            user,
        })
    }

    fn err(&self, reason: String) -> CliError {
        CliError::Http {
            url: self.shown.clone(),
            reason,
        }
    }
}

/// A client for `base`: over `https://` with rustls (ring) and the system
/// roots from `backstop::tls`; over plain `http://` with a TLS setting that
/// is never used, so no CA bundle is read (a minimal image without
/// ca-certificates still reaches an `http://` API).
fn client(https: bool) -> Result<reqwest::Client, String> {
    let tls = if https {
        backstop::tls::TlsOptions::default()
            .client_config()
            .map_err(|e| e.to_string())?
    } else {
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    };
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| e.to_string())
}

/// Sends `method` to `path` (e.g. `/api/queues/%2f`) under `base` with an
/// optional JSON body; returns the JSON answer (`null` for an empty one).
pub async fn request_json(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, CliError> {
    let endpoint = Endpoint::parse(base)?;
    let url = endpoint
        .base
        .join(path.trim_start_matches('/'))
        .map_err(|e| endpoint.err(format!("{path}: {e}")))?;
    let client = client(endpoint.base.scheme() == "https")
        .map_err(|e| endpoint.err(format!("creating an HTTP client: {e}")))?;
    let mut request = client
        .request(method, url)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some((user, password)) = &endpoint.user {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let failed = |e: reqwest::Error| {
        let reason = if e.is_timeout() {
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
        } else if let Some(reason) = backstop::tls::explain(&e) {
            format!("TLS handshake failed: {reason}")
        } else if endpoint.base.scheme() == "https" {
            format!(
                "{} (is the management API served over https on this port?)",
                crate::redact::redact_all(&error_chain(&e))
            )
        } else {
            format!(
                "{} (is the management plugin enabled and the URL right?)",
                crate::redact::redact_all(&e.without_url().to_string())
            )
        };
        endpoint.err(reason)
    };
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(endpoint.err(format!(
                "{path}: the answer is larger than {} MiB",
                MAX_BODY >> 20
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    match status.as_u16() {
        200..=299 if bytes.iter().all(u8::is_ascii_whitespace) => Ok(serde_json::Value::Null),
        200..=299 => serde_json::from_slice(&bytes)
            .map_err(|e| endpoint.err(format!("{path}: not JSON: {e}"))),
        401 => Err(endpoint.err(
            "authentication failed (check the user and password in --rabbitmq-api; percent-encode @ : / % in them)"
                .into(),
        )),
        404 => Err(endpoint.err(format!("{path} not found (check --vhost)"))),
        s => Err(endpoint.err(format!(
            "{path} answered HTTP {s}: {}",
            crate::dlq::table::shorten(&String::from_utf8_lossy(&bytes), 200)
        ))),
    }
}

/// `e` and its sources, one after the other (reqwest's own text names only
/// the outermost, which for a TLS failure says nothing of the cause).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// GETs `path` from `base` (`http[s]://user:password@host:port`) and parses the JSON body.
pub async fn get_json(base: &str, path: &str) -> Result<serde_json::Value, CliError> {
    request_json(base, reqwest::Method::GET, path, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_percent_decoded_and_taken_out_of_the_url() {
        let e = Endpoint::parse("http://us%3Aer:p%40ss%3Aw%25rd@h:15672").unwrap();
        assert_eq!(e.user, Some(("us:er".to_owned(), "p@ss:w%rd".to_owned())));
        assert_eq!(e.base.as_str(), "http://h:15672/");
        assert!(!e.shown.contains("ss"), "{}", e.shown);
        assert!(Endpoint::parse("https://h").is_ok());
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("h:15672").is_err());
    }
}
