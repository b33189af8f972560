//! A minimal HTTP/1.0 GET client for the RabbitMQ management API (plain
//! HTTP, basic auth), so the CLI needs no HTTP stack.

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::CliError;
use crate::redact::redact;

/// GETs `path` from `base` (`http://user:password@host:port`) and parses the JSON body.
pub async fn get_json(base: &str, path: &str) -> Result<serde_json::Value, CliError> {
    let shown = redact(base);
    let err = |reason: String| CliError::Http {
        url: shown.clone(),
        reason,
    };
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        err("only http:// URLs are supported (e.g. http://guest:guest@127.0.0.1:15672)".into())
    })?;
    let rest = rest.trim_end_matches('/');
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let host = host.split('/').next().unwrap_or(host);
    let mut request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n");
    if let Some(auth) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(auth);
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let io = |e: std::io::Error| {
        err(format!(
            "{e} (is the management plugin enabled and the URL right?)"
        ))
    };
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| err("no answer within 10 s".into()))?
    .map_err(io)?;
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("malformed HTTP response".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match status {
        200 => serde_json::from_str(body).map_err(|e| err(format!("{path}: not JSON: {e}"))),
        401 => Err(err(
            "authentication failed (check the user and password in --rabbitmq-api)".into(),
        )),
        404 => Err(err(format!("{path} not found (check --vhost)"))),
        s => Err(err(format!("{path} answered HTTP {s}"))),
    }
}
