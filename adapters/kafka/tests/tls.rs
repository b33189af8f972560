//! SSL and SASL_SSL against the TLS test broker (scripts/services/tls.sh):
//! SASL_SSL with a SCRAM user on 9094, SSL with client certificates on 9095.
//! The full stack runs over each; each misconfiguration fails fast with
//! librdkafka's explanation and no secret.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::publish::Publisher;
use backstop_kafka::{Kafka, KafkaOption, KafkaSource, RetryTiers, TopicSpec};
use backstop_testkit::conformance::{Harness, stack_dead_letters};

const PASSWORD: &str = "backstop-secret";

fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

fn options(specs: &[String]) -> Vec<KafkaOption> {
    specs
        .iter()
        .map(|s| KafkaOption::parse(s).expect("valid option"))
        .collect()
}

/// SASL_SSL on 9094 with `mechanism` and `password`, trusting `ca`.
fn sasl(mechanism: &str, password: &str, ca: &str) -> (String, Vec<KafkaOption>) {
    let dir = certs();
    (
        "localhost:9094".to_owned(),
        options(&[
            "security.protocol=SASL_SSL".into(),
            format!("sasl.mechanism={mechanism}"),
            "sasl.username=backstop".into(),
            format!("sasl.password={password}"),
            format!("ssl.ca.location={dir}/{ca}"),
        ]),
    )
}

/// SSL on 9095 presenting the client certificate `client`.
fn mtls(client: &str) -> (String, Vec<KafkaOption>) {
    let dir = certs();
    (
        "localhost:9095".to_owned(),
        options(&[
            "security.protocol=SSL".into(),
            format!("ssl.ca.location={dir}/ca.pem"),
            format!("ssl.certificate.location={dir}/{client}.pem"),
            format!("ssl.key.location={dir}/{client}.key"),
        ]),
    )
}

fn kafka(endpoint: &(String, Vec<KafkaOption>), group: &str) -> Kafka {
    common::init_tracing();
    Kafka::new(endpoint.0.clone(), group).configure(|c| {
        c.apply_options(&endpoint.1);
        c.session_timeout = Duration::from_secs(6);
        c.auto_commit_interval = Duration::from_millis(200);
        c.message_timeout = Duration::from_secs(10);
        c.retry_tiers = RetryTiers::new([]);
    })
}

struct TlsHarness {
    endpoint: (String, Vec<KafkaOption>),
}

impl TlsHarness {
    fn group_of(queue: &str) -> String {
        format!("{queue}-group")
    }
}

impl Harness for TlsHarness {
    type Source = KafkaSource;

    async fn fresh_queue(&self) -> Result<String, BoxError> {
        let topic = common::unique("tls");
        kafka(&self.endpoint, &Self::group_of(&topic))
            .ensure_topics([TopicSpec::new(topic.clone()).partitions(2)])
            .await?;
        Ok(topic)
    }

    async fn source(&self, queue: &str, prefetch: usize) -> Result<KafkaSource, BoxError> {
        Ok(kafka(&self.endpoint, &Self::group_of(queue)).source(&[queue], prefetch)?)
    }

    async fn publisher(&self) -> Result<Arc<dyn Publisher>, BoxError> {
        Ok(Arc::new(
            kafka(&self.endpoint, "tls-publisher").publisher()?,
        ))
    }

    async fn dead_letter_sink(&self, queue: &str) -> Result<Arc<dyn DeadLetterSink>, BoxError> {
        Ok(Arc::new(
            kafka(&self.endpoint, &Self::group_of(queue)).dead_letter_sink()?,
        ))
    }

    fn dlq_name(&self, queue: &str) -> String {
        kafka(&self.endpoint, &Self::group_of(queue)).dlq_topic(queue)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stack_over_sasl_ssl_scram_sha_512() {
    let h = TlsHarness {
        endpoint: sasl("SCRAM-SHA-512", PASSWORD, "ca.pem"),
    };
    let report = stack_dead_letters(&h).await.expect("stack over SASL_SSL");
    assert_eq!(report.received, 10, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stack_over_mutual_tls() {
    let h = TlsHarness {
        endpoint: mtls("client"),
    };
    let report = stack_dead_letters(&h).await.expect("stack over mutual TLS");
    assert_eq!(report.received, 10, "{report}");
}

#[tokio::test]
async fn plain_and_scram_sha_256_authenticate() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        kafka(&sasl(mechanism, PASSWORD, "ca.pem"), "tls-check")
            .check(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    }
}

/// Checks `endpoint`, expecting a failure within 8 s; returns the message.
async fn refused(endpoint: (String, Vec<KafkaOption>)) -> String {
    let started = Instant::now();
    let error = kafka(&endpoint, "tls-check")
        .check(Duration::from_secs(30))
        .await
        .expect_err("the check must fail");
    let text = error.to_string();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}: {text}");
    assert!(!text.contains(PASSWORD), "a secret leaked: {text}");
    text
}

#[tokio::test]
async fn a_wrong_sasl_password_fails_fast_saying_authentication_failed() {
    let text = refused(sasl("SCRAM-SHA-512", "not-the-password", "ca.pem")).await;
    assert!(text.to_lowercase().contains("authentication"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

#[tokio::test]
async fn a_wrong_ca_fails_fast_saying_the_certificate_is_not_verified() {
    let text = refused(sasl("SCRAM-SHA-512", PASSWORD, "other-ca.pem")).await;
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("not signed by a trusted CA"), "{text}");
}

#[tokio::test]
async fn an_expired_client_certificate_fails_fast() {
    let text = refused(mtls("expired-client")).await;
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test]
async fn a_client_certificate_the_broker_does_not_trust_fails_fast() {
    let text = refused(mtls("untrusted-client")).await;
    assert!(text.contains("refused our client certificate"), "{text}");
}

#[tokio::test]
async fn a_plain_text_client_on_the_tls_port_fails_fast() {
    let text = refused(("localhost:9094".to_owned(), Vec::new())).await;
    assert!(text.contains("security.protocol"), "{text}");
}

#[tokio::test]
async fn each_new_client_reads_the_certificate_files_as_they_are_now() {
    let dir = std::env::temp_dir().join(common::unique("kafka-rotate"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let install = |name: &str| {
        std::fs::copy(format!("{}/{name}.pem", certs()), &cert).unwrap();
        std::fs::copy(format!("{}/{name}.key", certs()), &key).unwrap();
    };
    let endpoint = (
        "localhost:9095".to_owned(),
        options(&[
            "security.protocol=SSL".into(),
            format!("ssl.ca.location={}/ca.pem", certs()),
            format!("ssl.certificate.location={}", cert.display()),
            format!("ssl.key.location={}", key.display()),
        ]),
    );
    // One handle; each check creates a librdkafka client, which reads the files.
    let kafka = kafka(&endpoint, "tls-rotate");
    install("client");
    kafka.check(Duration::from_secs(10)).await.expect("valid");
    install("untrusted-client");
    let started = Instant::now();
    let error = kafka
        .check(Duration::from_secs(30))
        .await
        .expect_err("the broker refuses the certificate now on disk");
    assert!(started.elapsed() < Duration::from_secs(8), "{error}");
    assert!(
        error.to_string().contains("refused our client certificate"),
        "{error}"
    );
    install("rotated-client");
    kafka
        .check(Duration::from_secs(10))
        .await
        .expect("the renewed certificate");
    std::fs::remove_dir_all(&dir).ok();
}
