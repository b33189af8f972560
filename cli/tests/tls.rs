//! The CLI against the TLS endpoints of scripts/services/tls.sh: `dlq list`
//! over amqps:// and over Kafka SASL_SSL with `--kafka-option` (the password
//! read from a file and never shown), and a wrong password failing fast.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use backstop_kafka::{Kafka, KafkaOption, TopicSpec};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

const PASSWORD: &str = "backstop-secret";

fn certs() -> String {
    std::env::var("BACKSTOP_TLS_DIR").unwrap_or_else(|_| "/var/cache/backstop/tls".to_owned())
}

fn amqps() -> String {
    format!(
        "amqps://guest:guest@localhost:5671/%2f?cacertfile={}/ca.pem",
        certs()
    )
}

/// The SASL_SSL options, the password given as `password` (a value or `@file`).
fn sasl_options(password: &str) -> Vec<String> {
    vec![
        "security.protocol=SASL_SSL".into(),
        "sasl.mechanism=SCRAM-SHA-512".into(),
        "sasl.username=backstop".into(),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={}/ca.pem", certs()),
    ]
}

fn with_options<'a>(args: &[&'a str], options: &'a [String]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for option in options {
        all.extend(["--kafka-option", option.as_str()]);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_over_amqps() {
    let rabbit = RabbitMq::connect(amqps()).await.expect("TLS node");
    let q = unique("tls");
    rabbit.declare(&Topology::quorum(&q)).await.unwrap();
    rabbit
        .publisher()
        .publish_to_queue(&format!("{q}.dlq"), &letter(&q, "over-tls", 1, 0))
        .await
        .unwrap();
    let url = amqps();
    let listed = ids(&cli_ok(&[
        "dlq", "list", "--json", "--amqp", &url, "--queue", &q,
    ]));
    assert_eq!(listed, BTreeSet::from(["over-tls".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_over_sasl_ssl_with_the_password_from_a_file() {
    let options: Vec<KafkaOption> = sasl_options(PASSWORD)
        .iter()
        .map(|s| KafkaOption::parse(s).unwrap())
        .collect();
    let (topic, group) = (unique("kt"), unique("kg"));
    let kafka = Kafka::new("localhost:9094", &group).configure(|c| c.apply_options(&options));
    kafka
        .ensure_topics([TopicSpec::new(&topic)])
        .await
        .expect("topics over SASL_SSL");
    backstop::publish::Publisher::publish(
        &kafka.publisher().unwrap(),
        &kafka.dlq_topic(&topic),
        &letter(&topic, "over-sasl", 1, 0),
    )
    .await
    .unwrap();

    let file = std::env::temp_dir().join(unique("pw"));
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let options = sasl_options(&format!("@{}", file.display()));
    let args = [
        "dlq",
        "list",
        "--json",
        "--kafka",
        "localhost:9094",
        "--topic",
        &topic,
        "--group",
        &group,
    ];
    let out = cli(&with_options(&args, &options));
    std::fs::remove_file(&file).ok();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(ids(&stdout), BTreeSet::from(["over-sasl".to_owned()]));
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
}

#[test]
fn a_wrong_sasl_password_fails_fast_without_showing_it() {
    let options = sasl_options("wrong-password");
    let args = [
        "dlq",
        "list",
        "--kafka",
        "localhost:9094",
        "--dlq",
        "bt-cli-none",
    ];
    let started = Instant::now();
    let out = cli(&with_options(&args, &options));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(8), "{stderr}");
    assert!(stderr.to_lowercase().contains("authentication"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
}

/// Runs the binary with `SSL_CERT_FILE` set to `ca` (the trust store the
/// https client uses, as curl and OpenSSL do).
fn cli_trusting(ca: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .env("SSL_CERT_FILE", format!("{}/{ca}", certs()))
        .args(args)
        .output()
        .expect("run backstop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reads_the_management_api_over_https() {
    let rabbit = RabbitMq::connect(amqps()).await.expect("TLS node");
    let q = unique("doc");
    // A classic queue without a DLQ: a risk the audit must report.
    rabbit
        .channel()
        .await
        .unwrap()
        .queue_declare(
            q.as_str().into(),
            backstop_rabbitmq::lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let api = "https://guest:guest@localhost:15671";
    let out = cli_trusting(
        "ca.pem",
        &["doctor", "--json", "--rabbitmq-api", api, "--prefix", &q],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON findings: {stderr}"));
    assert!(
        findings
            .iter()
            .any(|f| f["object"].as_str().is_some_and(|o| o.contains(q.as_str()))),
        "{findings:?}"
    );
    // The wrong trust store: refused at once, saying why, no password shown.
    let started = Instant::now();
    let out = cli_trusting(
        "other-ca.pem",
        &["doctor", "--json", "--rabbitmq-api", api, "--prefix", &q],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(8), "{stderr}");
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    assert!(!stderr.contains("guest:guest"), "{stderr}");
    let _ = rabbit
        .channel()
        .await
        .unwrap()
        .queue_delete(q.as_str().into(), Default::default())
        .await;
}
