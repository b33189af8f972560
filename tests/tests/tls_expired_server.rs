//! A server presenting an expired certificate (signed by the trusted test
//! CA, `expired-server.pem` from scripts/services/tls.sh, served by
//! `openssl s_server`): every TLS client refuses it at once, saying the
//! certificate has expired, and names no secret.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backstop::tls::TlsOptions;
use backstop_kafka::{Kafka, KafkaOption};
use backstop_rabbitmq::{ConnectOptions, RabbitMq};
use backstop_redis::{RedisConfig, RedisStore};

fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

/// `openssl s_server` with the expired certificate on a free local port;
/// stopped when dropped.
struct ExpiredServer {
    child: Child,
    port: u16,
}

impl ExpiredServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = certs();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", &format!("{dir}/expired-server.pem")])
            .args(["-key", &format!("{dir}/expired-server.key")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl (installed by scripts/services)");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        ExpiredServer { child, port }
    }
}

impl Drop for ExpiredServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Expects `connect` to fail within 5 s, saying the certificate expired.
async fn refused_as_expired<T, E: std::fmt::Display>(
    connect: impl Future<Output = Result<T, E>>,
) -> String {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .expect("never hangs");
    let Err(error) = result else {
        panic!("a server with an expired certificate must be refused")
    };
    let text = error.to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "slow: {text}");
    assert!(text.contains("expired"), "{text}");
    assert!(!text.contains("s3cret"), "a secret leaked: {text}");
    text
}

#[tokio::test]
async fn redis_refuses_a_server_whose_certificate_expired() {
    let server = ExpiredServer::start();
    let config =
        RedisConfig::new(format!("rediss://:s3cret@localhost:{}", server.port)).tls(TlsOptions {
            ca_file: Some(format!("{}/ca.pem", certs()).into()),
            ..TlsOptions::default()
        });
    refused_as_expired(RedisStore::connect_with(config)).await;
}

#[tokio::test]
async fn rabbitmq_refuses_a_server_whose_certificate_expired() {
    let server = ExpiredServer::start();
    let url = format!(
        "amqps://guest:s3cret@localhost:{}/%2f?cacertfile={}/ca.pem",
        server.port,
        certs()
    );
    let options = ConnectOptions::default().connect_timeout(Duration::from_secs(20));
    refused_as_expired(RabbitMq::connect_with(&url, options)).await;
}

#[tokio::test]
async fn kafka_refuses_a_broker_whose_certificate_expired() {
    let server = ExpiredServer::start();
    let options: Vec<KafkaOption> = [
        "security.protocol=SSL".to_owned(),
        format!("ssl.ca.location={}/ca.pem", certs()),
    ]
    .iter()
    .map(|s| KafkaOption::parse(s).expect("valid option"))
    .collect();
    let kafka = Kafka::new(format!("localhost:{}", server.port), "tls-expired")
        .configure(|c| c.apply_options(&options));
    refused_as_expired(kafka.check(Duration::from_secs(30))).await;
}
