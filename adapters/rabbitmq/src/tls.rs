//! `amqps://`: the TLS options of a broker URL, named as in RabbitMQ's URI
//! query parameters, and the TLS handshake of each connection.
//!
//! | Parameter | Meaning |
//! |---|---|
//! | `cacertfile` | PEM file of the CAs to trust (default: the system roots) |
//! | `certfile`, `keyfile` | PEM client certificate and key (mutual TLS) |
//! | `verify` | `verify_peer` (default) or `verify_none` (tests only) |
//! | `server_name_indication` | the name to verify and send as SNI, or `disable` |
//!
//! The files are read on every connection attempt, so a rotated
//! certificate is used from the next reconnect on.

use backstop::tls::{TlsError, TlsOptions, Verify};

/// The TLS settings of one broker URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTls {
    /// The options; `None` for a plain `amqp://` URL.
    pub(crate) options: Option<TlsOptions>,
    /// `server_name_indication=disable`: send no SNI.
    pub(crate) sni_disabled: bool,
}

const TLS_PARAMS: [&str; 5] = [
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
];

/// Reads the TLS parameters of `url`. A TLS parameter on an `amqp://` URL,
/// or an unknown `verify` value, is an error rather than silently ignored.
pub(crate) fn parse(url: &str) -> Result<UrlTls, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let secure = match parsed.scheme() {
        "amqps" => true,
        "amqp" => false,
        other => return Err(format!("unknown scheme {other:?} (expected amqp or amqps)")),
    };
    let mut options = TlsOptions::default();
    let mut sni_disabled = false;
    for (key, value) in parsed.query_pairs() {
        if !TLS_PARAMS.contains(&key.as_ref()) {
            continue;
        }
        if !secure {
            return Err(format!(
                "the TLS parameter {key} needs an amqps:// URL (this one is amqp://)"
            ));
        }
        let value = value.into_owned();
        match key.as_ref() {
            "cacertfile" => options.ca_file = Some(value.into()),
            "certfile" => options.cert_file = Some(value.into()),
            "keyfile" => options.key_file = Some(value.into()),
            "verify" => {
                options.verify = match value.as_str() {
                    "verify_peer" => Verify::Peer,
                    "verify_none" => Verify::None,
                    _ => {
                        return Err(format!(
                            "verify={value} is not one of verify_peer, verify_none"
                        ));
                    }
                }
            }
            _ if value == "disable" => sni_disabled = true,
            _ => options.server_name = Some(value),
        }
    }
    Ok(UrlTls {
        options: secure.then_some(options),
        sni_disabled,
    })
}

/// The error for an `amqps://` URL in a build without TLS.
#[cfg(not(feature = "tls"))]
pub(crate) fn not_built(url: &str) -> TlsError {
    TlsError::NotBuilt(url.to_owned())
}

#[cfg(feature = "tls")]
mod connect {
    use std::sync::Arc;

    use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
    use lapin::uri::{AMQPScheme, AMQPUri};
    use lapin::{Connection, ConnectionProperties};

    use super::{TlsError, UrlTls};

    /// Opens an AMQP connection over TLS: the certificate files are read
    /// now, the TCP stream is opened by lapin, the handshake by rustls.
    pub(crate) async fn connect(
        uri: AMQPUri,
        tls: &UrlTls,
        properties: ConnectionProperties,
    ) -> Result<Result<Connection, lapin::Error>, TlsError> {
        let options = tls.options.clone().unwrap_or_default();
        let mut config = options.client_config()?;
        config.enable_sni = !tls.sni_disabled;
        let name = options.server_name(&uri.authority.host)?;
        let name = name.to_str().into_owned();
        let connector = RustlsConnector::from(Arc::new(config));
        let runtime = match lapin::runtime::default_runtime() {
            Ok(runtime) => runtime,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Connection::connector(
            uri,
            runtime,
            async move |mut uri: AMQPUri, runtime| {
                uri.scheme = AMQPScheme::AMQP;
                let plain = uri.connect_async(&runtime).await?;
                Ok(plain.into_rustls(&connector, &name).await?)
            },
            properties,
        )
        .await)
    }
}

#[cfg(feature = "tls")]
pub(crate) use self::connect::connect;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rabbitmq_uri_tls_parameters() {
        let tls = parse(
            "amqps://u:p@h:5671/%2f?cacertfile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_peer&server_name_indication=broker.example&heartbeat=10",
        )
        .expect("valid");
        let options = tls.options.expect("amqps");
        assert_eq!(options.ca_file.as_deref(), Some("/etc/ca.pem".as_ref()));
        assert_eq!(options.cert_file.as_deref(), Some("/c.pem".as_ref()));
        assert_eq!(options.key_file.as_deref(), Some("/k.pem".as_ref()));
        assert_eq!(options.verify, Verify::Peer);
        assert_eq!(options.server_name.as_deref(), Some("broker.example"));
        assert!(!tls.sni_disabled);
    }

    #[test]
    fn plain_urls_have_no_tls_and_refuse_tls_parameters() {
        assert_eq!(parse("amqp://h/%2f").expect("valid").options, None);
        let error = parse("amqp://h/%2f?cacertfile=/ca.pem").expect_err("refused");
        assert!(error.contains("amqps://"), "{error}");
        assert!(parse("amqps://h?verify=maybe").is_err());
        assert!(
            parse("amqps://h?server_name_indication=disable")
                .expect("valid")
                .sni_disabled
        );
    }
}
