//! Why the broker's certificate failed verification. librdkafka (OpenSSL)
//! says only "certificate verify failed"; one handshake of our own (rustls,
//! the same CA file) names the reason: expired, another CA, another name.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use backstop::tls::TlsOptions;
use backstop::tls::rustls::{ClientConnection, Stream};

use crate::config::KafkaConfig;

/// The reason the first bootstrap server's certificate is not accepted with
/// `config`'s `ssl.ca.location` (or the system roots); `None` when it cannot
/// tell (no TLS answer, or the handshake succeeds).
pub(crate) fn explain(config: &KafkaConfig) -> Option<String> {
    let first = config.brokers.split(',').next()?.trim();
    let first = first.rsplit_once("://").map_or(first, |(_, rest)| rest);
    let (host, _) = first.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let options = TlsOptions {
        ca_file: config.properties.get("ssl.ca.location").map(Into::into),
        ..TlsOptions::default()
    };
    let tls = options.client_config().ok()?;
    let name = options.server_name(host).ok()?;
    let addr = first.to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut connection = ClientConnection::new(Arc::new(tls), name).ok()?;
    let error = Stream::new(&mut connection, &mut tcp).flush().err()?;
    backstop::tls::explain(&error)
}
