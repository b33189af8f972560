//! `backstop doctor` against the real brokers.

mod common;

use std::time::Duration;

use backstop_kafka::{Kafka, RetryTiers, TopicSpec};
use backstop_rabbitmq::lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

const API: &str = "http://guest:guest@127.0.0.1:15672";

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes()))
}

fn doctor(prefix: &str, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let b = brokers();
    let mut args = vec![
        "doctor",
        "--json",
        "--rabbitmq-api",
        API,
        "--kafka",
        b.as_str(),
        "--prefix",
        prefix,
    ];
    args.extend(extra);
    let out = cli(&args);
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), findings)
}

fn has(findings: &[serde_json::Value], severity: &str, object: &str, risk: &str) -> bool {
    findings.iter().any(|f| {
        f["severity"] == severity
            && f["object"] == object
            && f["risk"].as_str().is_some_and(|r| r.contains(risk))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_each_risk_and_passes_the_safe_shapes() {
    let p = unique("doc");
    let rabbit = RabbitMq::connect(amqp()).await.unwrap();
    let ch = rabbit.channel().await.unwrap();
    let transient = format!("{p}-transient");
    ch.queue_declare(
        transient.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-dead-letter-exchange".into(),
        text(&format!("{p}-missing-dlx")),
    );
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    let risky = format!("{p}-risky");
    ch.queue_declare(
        risky.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let unbound = format!("{p}-unbound-dlx");
    ch.exchange_declare(
        unbound.as_str().into(),
        backstop_rabbitmq::lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), text(&unbound));
    let lonely = format!("{p}-lonely");
    ch.queue_declare(
        lonely.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();

    let k = Kafka::new(brokers(), "g").retry_tiers(RetryTiers::new([Duration::from_secs(5)]));
    let topics = k.topics().unwrap();
    let unclean = format!("{p}-unclean");
    let src = format!("{p}-src");
    let small_dlq = format!("{src}.g.dlq");
    topics
        .create(&[
            TopicSpec::new(&unclean).config("unclean.leader.election.enable", "true"),
            TopicSpec::new(&src).partitions(3),
            TopicSpec::new(&small_dlq),
        ])
        .await
        .unwrap();

    let (status, f) = doctor(&p, &["--group", "g"]);
    assert_eq!(status, 2, "high findings exit non-zero: {f:#?}");
    assert!(has(&f, "high", &transient, "non-durable"));
    assert!(has(&f, "warning", &transient, "classic queue"));
    assert!(has(&f, "high", &transient, "no dead-letter exchange"));
    assert!(has(&f, "warning", &risky, "without x-delivery-limit"));
    assert!(has(&f, "high", &risky, "reject-publish"));
    assert!(has(&f, "high", &risky, "does not exist"));
    assert!(has(&f, "high", &lonely, "no bound queue"));
    assert!(has(&f, "high", &unclean, "unclean.leader.election"));
    assert!(
        has(&f, "warning", &unclean, "replication factor 1"),
        "one-node cluster: a warning"
    );
    assert!(has(&f, "warning", &unclean, "min.insync.replicas"));
    assert!(has(&f, "warning", &small_dlq, "fewer than its source"));
    assert!(
        has(&f, "high", &small_dlq, "finite retention.ms"),
        "a DLQ on the broker's default retention loses letters: {f:#?}"
    );
    assert!(has(&f, "high", &unclean, "has no DLQ topic"));

    // The safe shapes backstop declares: nothing high.
    let safe = unique("safe");
    rabbit
        .declare(&Topology::quorum(&safe).retry_tiers([Duration::from_secs(5)]))
        .await
        .unwrap();
    k.ensure_topics([TopicSpec::new(&safe).partitions(2)])
        .await
        .unwrap();
    let (status, f) = doctor(&safe, &["--group", "g"]);
    assert_eq!(status, 0, "{f:#?}");
    assert!(f.iter().all(|x| x["severity"] == "warning"), "{f:#?}");
    assert!(!f.is_empty(), "replication warnings on a one-node cluster");
    topics.delete(&[&unclean, &src, &small_dlq]).await.unwrap();
}
