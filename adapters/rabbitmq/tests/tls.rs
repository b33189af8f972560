//! amqps:// against the TLS test node (scripts/services/tls.sh: port 5671,
//! management API over https on 15671): the full stack over TLS and mutual
//! TLS, and each misconfiguration failing fast with an error that says what
//! is wrong and names no secret.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::publish::Publisher;
use backstop_rabbitmq::{ConnectError, ConnectOptions, RabbitMq, RabbitSource, Topology};
use backstop_testkit::conformance::{Harness, stack_dead_letters};

/// The folder of the test certificates (scripts/services/tls.sh).
fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

/// The TLS node's URL with the test CA, plus `extra` query parameters.
fn url(extra: &str) -> String {
    let port = std::env::var("BACKSTOP_AMQPS_PORT").unwrap_or_else(|_| "5671".to_owned());
    format!(
        "amqps://guest:guest@localhost:{port}/%2f?cacertfile={}/ca.pem{extra}",
        certs()
    )
}

fn mtls(extra: &str) -> String {
    let dir = certs();
    url(&format!(
        "&certfile={dir}/client.pem&keyfile={dir}/client.key{extra}"
    ))
}

/// A client certificate and key at fixed paths in a fresh folder; `install`
/// puts one of the test rig's pairs there (`client`, `rotated-client`, …).
struct ClientFiles {
    dir: std::path::PathBuf,
}

impl ClientFiles {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(common::unique(prefix));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        ClientFiles { dir }
    }

    fn install(&self, name: &str) {
        for ext in ["pem", "key"] {
            std::fs::copy(
                format!("{}/{name}.{ext}", certs()),
                self.dir.join(format!("client.{ext}")),
            )
            .expect("copy a test certificate");
        }
    }

    /// The URL parameters naming the files.
    fn query(&self) -> String {
        format!(
            "&certfile={}&keyfile={}",
            self.dir.join("client.pem").display(),
            self.dir.join("client.key").display()
        )
    }
}

impl Drop for ClientFiles {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

struct TlsHarness {
    rabbit: RabbitMq,
    declared: Mutex<Vec<Topology>>,
}

impl TlsHarness {
    async fn connect(url: &str, name: &str) -> Self {
        let rabbit = RabbitMq::connect_with(url, ConnectOptions::default().connection_name(name))
            .await
            .expect("the TLS test node is reachable (scripts/services/tls.sh)");
        TlsHarness {
            rabbit,
            declared: Mutex::default(),
        }
    }

    async fn cleanup(self) {
        let declared = std::mem::take(&mut *self.declared.lock().unwrap());
        for topology in &declared {
            common::cleanup(&self.rabbit, topology).await;
        }
        self.rabbit.close().await;
    }
}

impl Harness for TlsHarness {
    type Source = RabbitSource;

    async fn fresh_queue(&self) -> Result<String, BoxError> {
        let topology = Topology::quorum(common::unique("tls"));
        self.rabbit.declare(&topology).await?;
        let queue = topology.queue().to_owned();
        self.declared.lock().unwrap().push(topology);
        Ok(queue)
    }

    async fn source(&self, queue: &str, prefetch: usize) -> Result<RabbitSource, BoxError> {
        Ok(self.rabbit.source(queue, prefetch).await?)
    }

    async fn publisher(&self) -> Result<Arc<dyn Publisher>, BoxError> {
        Ok(Arc::new(self.rabbit.publisher()))
    }

    async fn dead_letter_sink(&self, _queue: &str) -> Result<Arc<dyn DeadLetterSink>, BoxError> {
        Ok(Arc::new(self.rabbit.dead_letter_sink()))
    }

    fn dlq_name(&self, queue: &str) -> String {
        backstop_rabbitmq::topology::dlq_name(queue)
    }
}

/// The peer certificate subjects the broker recorded for connections named `name…`,
/// read from the management API over https.
fn peer_subjects(name: &str) -> Vec<String> {
    let port = std::env::var("BACKSTOP_RABBIT_HTTPS_PORT").unwrap_or_else(|_| "15671".to_owned());
    let out = std::process::Command::new("curl")
        .args(["-fsS", "-m", "5", "-u", "guest:guest", "--cacert"])
        .arg(format!("{}/ca.pem", certs()))
        .arg(format!(
            "https://localhost:{port}/api/connections?columns=user_provided_name,peer_cert_subject"
        ))
        .output()
        .expect("curl runs");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["user_provided_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(name))
        })
        .map(|c| c["peer_cert_subject"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn full_stack_over_amqps_consumes_and_dead_letters() {
    let h = TlsHarness::connect(&url(""), &common::unique("tls-conn")).await;
    let report = stack_dead_letters(&h).await;
    h.cleanup().await;
    let report = report.expect("stack over amqps");
    assert_eq!(report.received, 10, "{report}");
}

#[tokio::test]
async fn full_stack_over_mutual_tls_presents_the_client_certificate() {
    let name = common::unique("mtls-conn");
    let h = TlsHarness::connect(&mtls(""), &name).await;
    let report = stack_dead_letters(&h).await;
    // The broker saw our client certificate on the (still open) connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut subjects = peer_subjects(&name);
    while !subjects.iter().any(|s| s.contains("backstop-client")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        subjects = peer_subjects(&name);
    }
    h.cleanup().await;
    let report = report.expect("stack over mutual TLS");
    assert_eq!(report.received, 10, "{report}");
    assert!(
        subjects.iter().any(|s| s.contains("CN=backstop-client")),
        "the broker recorded no client certificate: {subjects:?}"
    );
}

/// Connects to `url`, expecting a failure within 5 s; returns its message.
async fn refused(url: &str) -> String {
    let started = Instant::now();
    let result = RabbitMq::connect_with(
        url,
        ConnectOptions::default().connect_timeout(Duration::from_secs(20)),
    )
    .await;
    let error: ConnectError = result.expect_err("the connection must fail");
    let elapsed = started.elapsed();
    let text = error.to_string();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: {text}");
    assert!(!text.contains(":guest@"), "the password leaked: {text}");
    text
}

#[tokio::test]
async fn a_wrong_ca_fails_fast_saying_the_certificate_is_untrusted() {
    let other = format!("{}/other-ca.pem", certs());
    let text = refused(&url("").replace(&format!("{}/ca.pem", certs()), &other)).await;
    assert!(text.contains("not signed by a trusted CA"), "{text}");
}

#[tokio::test]
async fn an_expired_client_certificate_fails_fast_saying_it_expired() {
    let dir = certs();
    let text = refused(&url(&format!(
        "&certfile={dir}/expired-client.pem&keyfile={dir}/expired-client.key"
    )))
    .await;
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test]
async fn a_client_certificate_the_broker_does_not_trust_fails_fast() {
    let dir = certs();
    let text = refused(&url(&format!(
        "&certfile={dir}/untrusted-client.pem&keyfile={dir}/untrusted-client.key"
    )))
    .await;
    assert!(text.contains("refused our client certificate"), "{text}");
}

#[tokio::test]
async fn a_plain_text_client_on_the_tls_port_fails_fast_pointing_at_amqps() {
    let port = std::env::var("BACKSTOP_AMQPS_PORT").unwrap_or_else(|_| "5671".to_owned());
    let text = refused(&format!("amqp://guest:guest@localhost:{port}/%2f")).await;
    assert!(text.contains("amqps://"), "{text}");
}

#[tokio::test]
async fn a_missing_ca_file_is_named() {
    let text = refused(&url("").replace("ca.pem", "no-such-ca.pem")).await;
    assert!(text.contains("no-such-ca.pem"), "{text}");
}

#[tokio::test]
async fn a_tls_parameter_on_a_plain_url_is_refused() {
    let text = refused("amqp://guest:guest@localhost:5672/%2f?cacertfile=/ca.pem").await;
    assert!(text.contains("amqps://"), "{text}");
}

#[tokio::test]
async fn a_rotated_client_certificate_is_read_again_on_the_next_connection() {
    let files = ClientFiles::new("rotate");
    let install = |name: &str| files.install(name);
    install("client");
    let url = url(&files.query());
    let rabbit = RabbitMq::connect(&url).await.expect("valid certificate");
    let topology = Topology::quorum(common::unique("rotate"));
    rabbit.declare(&topology).await.expect("declare");
    // Each source opens a connection of its own: it reads the files again.
    install("expired-client");
    let error = rabbit
        .source(topology.queue(), 1)
        .await
        .expect_err("the expired certificate now on disk is used");
    assert!(error.to_string().contains("expired"), "{error}");
    install("client");
    let source = rabbit.source(topology.queue(), 1).await.expect("renewed");
    drop(source);
    common::cleanup(&rabbit, &topology).await;
    rabbit.close().await;
}

#[tokio::test]
async fn verify_and_server_name_indication_are_honoured() {
    // verify_none accepts a server the CA file does not vouch for.
    let other = format!("{}/other-ca.pem", certs());
    let lenient = url("&verify=verify_none").replace(&format!("{}/ca.pem", certs()), &other);
    RabbitMq::connect(&lenient)
        .await
        .expect("verify_none connects")
        .close()
        .await;
    // The certificate names localhost: a different expected name is refused.
    let text = refused(&url("&server_name_indication=broker.example.com")).await;
    assert!(text.contains("not valid for this host name"), "{text}");
    RabbitMq::connect(&url("&server_name_indication=localhost"))
        .await
        .expect("the certificate's own name")
        .close()
        .await;
}

/// Closes, through the management API, every connection whose name starts
/// with `prefix`; returns how many.
fn close_connections(prefix: &str) -> usize {
    let port = std::env::var("BACKSTOP_RABBIT_HTTPS_PORT").unwrap_or_else(|_| "15671".to_owned());
    let api = format!("https://localhost:{port}/api/connections");
    let curl = |extra: &[&str], url: &str| {
        std::process::Command::new("curl")
            .args(["-fsS", "-m", "5", "-u", "guest:guest", "--cacert"])
            .arg(format!("{}/ca.pem", certs()))
            .args(extra)
            .arg(url)
            .output()
            .expect("curl runs")
    };
    let out = curl(&[], &format!("{api}?columns=name,user_provided_name"));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let names: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["user_provided_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    for name in &names {
        let path = name.replace(' ', "%20").replace('>', "%3E");
        curl(&["-X", "DELETE"], &format!("{api}/{path}"));
    }
    names.len()
}

#[tokio::test]
async fn a_consuming_source_presents_the_renewed_certificate_after_a_reconnect() {
    use backstop::Message;
    use backstop::runner::Source;
    let files = ClientFiles::new("rotate-live");
    let install = |name: &str| files.install(name);
    install("client");
    let url = url(&files.query());
    let name = common::unique("rotate-live");
    let rabbit = RabbitMq::connect_with(
        &url,
        ConnectOptions::default()
            .connection_name(&name)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .await
    .expect("valid certificate");
    let topology = Topology::quorum(common::unique("rotate-live"));
    rabbit.declare(&topology).await.expect("declare");
    let mut source = rabbit.source(topology.queue(), 1).await.expect("source");
    let consumer = format!("{name}-consumer");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !peer_subjects(&consumer)
        .iter()
        .any(|s| s.contains("CN=backstop-client"))
    {
        assert!(Instant::now() < deadline, "the consumer never showed up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The certificate is renewed on disk, then the consumer's connection drops.
    install("rotated-client");
    assert_eq!(close_connections(&consumer), 1, "the consumer's connection");
    rabbit
        .publisher()
        .publish_to_queue(topology.queue(), &Message::new("after the rotation"))
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match source.next().await {
                Some(Ok(delivery)) => break delivery,
                Some(Err(_disconnected)) => continue,
                None => panic!("the source ended"),
            }
        }
    })
    .await
    .expect("the source reconnects and delivers");
    assert_eq!(&delivery.message().payload[..], b"after the rotation");
    delivery.ack().await.expect("ack");
    // The management API lists connections a few seconds late.
    let renewed = |subjects: &[String]| {
        !subjects.is_empty()
            && subjects
                .iter()
                .all(|s| s.contains("CN=backstop-client-rotated"))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut subjects = peer_subjects(&consumer);
    while !renewed(&subjects) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        subjects = peer_subjects(&consumer);
    }
    assert!(
        renewed(&subjects),
        "the reconnected consumer presents the renewed certificate: {subjects:?}"
    );
    source.close().await;
    common::cleanup(&rabbit, &topology).await;
    rabbit.close().await;
}
