//! [`Kafka::check`](crate::Kafka::check): one metadata round trip with the
//! configured security settings, failing fast with librdkafka's own
//! explanation (TLS handshake, SASL authentication, unreachable broker)
//! instead of letting a worker start and then wait on a broker it can never
//! talk to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::Error;

/// Keeps the last error librdkafka reported through its error callback.
/// Also notes whether librdkafka declared every broker down.
#[derive(Debug, Default)]
struct Capture(Mutex<Option<(RDKafkaErrorCode, String)>>, AtomicBool);

impl ClientContext for Capture {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        // "n/n brokers are down" follows the failure that explains it.
        if code == RDKafkaErrorCode::AllBrokersDown {
            self.1.store(true, Ordering::SeqCst);
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A failure that explains everything (a refused handshake or login)
        // is not overwritten by the transport error that follows it.
        if !kept.as_ref().is_some_and(|(kept, _)| permanent(*kept)) {
            *kept = Some((code, reason.to_owned()));
        }
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// True when the first bootstrap server accepts a TCP connection.
fn accepts_tcp(brokers: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let first = first.rsplit_once("://").map_or(first, |(_, rest)| rest);
    first
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// A failure that will not go away by waiting: wrong credentials, a TLS
/// handshake that failed, a misconfigured security protocol.
fn permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
    )
}

/// True when librdkafka's `reason` is a TLS alert by which the broker
/// refused our client certificate (OpenSSL's "sslv3 alert bad certificate",
/// "tlsv1 alert unknown ca", "tlsv13 alert certificate required", …): it
/// arrives as a transport error, yet retrying cannot help.
fn refused_certificate(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("alert")
        && ["certificate", "unknown ca", "access denied"]
            .iter()
            .any(|what| reason.contains(what))
}

/// Fetches the cluster metadata within `timeout` (blocking; run it off the runtime).
pub(crate) fn check(config: &KafkaConfig, timeout: Duration) -> Result<(), Error> {
    let unreachable = |reason: String| Error::Unreachable {
        brokers: config.brokers.clone(),
        reason,
    };
    #[cfg(feature = "tls")]
    if let Some(path) = config.properties.get("ssl.certificate.location") {
        backstop::tls::check_client_certificate(path.as_ref())
            .map_err(|e| unreachable(e.to_string()))?;
    }
    let plain_text = config
        .properties
        .get("security.protocol")
        .is_none_or(|p| p.eq_ignore_ascii_case("plaintext"));
    let producer: BaseProducer<Capture> = config
        .admin_config()
        .create_with_context(Capture::default())
        .map_err(Error::Config)?;
    let deadline = Instant::now() + timeout;
    loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let result = producer.client().fetch_metadata(None, step);
        // Each poll serves one event: drain what queued up during the step.
        for _ in 0..64 {
            producer.poll(Duration::ZERO);
        }
        let captured = producer
            .context()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (result, captured) {
            (Ok(_), _) => return Ok(()),
            // librdkafka's hint for a plain-text client on a TLS listener
            // (and the reverse) comes with a transport error code.
            (Err(_), Some((code, reason))) if permanent(code) => {
                #[cfg(feature = "tls")]
                if reason.contains("certificate verify failed")
                    && let Some(why) = crate::verification::explain(config)
                {
                    return Err(unreachable(format!("{why}: {reason}")));
                }
                return Err(unreachable(reason));
            }
            (Err(_), Some((_, reason))) if refused_certificate(&reason) => {
                return Err(unreachable(format!(
                    "the broker refused our client certificate (not signed by a CA it trusts, \
                     expired or missing?): {reason}"
                )));
            }
            (Err(error), captured) if Instant::now() >= deadline => {
                let reason = captured.map_or_else(|| error.to_string(), |(_, reason)| reason);
                return Err(unreachable(reason));
            }
            // Nothing explains the failure: a plain-text client whose
            // broker accepts TCP but hangs up is talking to a TLS or SASL
            // listener.
            (Err(_), None)
                if plain_text
                    && producer.context().1.load(Ordering::SeqCst)
                    && accepts_tcp(&config.brokers) =>
            {
                return Err(unreachable(
                    "the broker accepts connections but hangs up on a plain-text client; \
                     is this a TLS or SASL listener? (set security.protocol, e.g. SSL or SASL_SSL)"
                        .to_owned(),
                ));
            }
            _ => {}
        }
    }
}
