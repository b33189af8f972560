//! `backstop doctor` on the 3-node clusters (`scripts/services/rabbitmq-cluster.sh`,
//! `scripts/services/kafka-cluster.sh`; the `clusters` step of
//! `scripts/test.sh` runs each test while its cluster is up): a
//! deliberately weak queue and topic are flagged with their fix, the shapes
//! the helpers declare pass. Named `on_a_cluster_*`: the main test step
//! skips them.

mod common;

use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::lapin::options::QueueDeclareOptions;
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

fn rabbit_urls() -> String {
    std::env::var("BACKSTOP_RABBITMQ_CLUSTER_URLS").unwrap_or_else(|_| {
        (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn kafka_brokers() -> String {
    std::env::var("BACKSTOP_KAFKA_CLUSTER_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094".to_owned())
}

fn doctor(target: &[&str], prefix: &str) -> (i32, Vec<serde_json::Value>) {
    let mut args = vec!["doctor", "--json", "--prefix", prefix];
    args.extend(target);
    let out = cli(&args);
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), findings)
}

fn find<'a>(
    findings: &'a [serde_json::Value],
    object: &str,
    risk: &str,
) -> Option<&'a serde_json::Value> {
    findings.iter().find(|f| {
        f["severity"] == "high"
            && f["object"] == object
            && f["risk"].as_str().is_some_and(|r| r.contains(risk))
    })
}

fn quorum_args(members: Option<i64>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes())),
    );
    if let Some(n) = members {
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongLongInt(n),
        );
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_rabbitmq_doctor_flags_weak_queues_and_passes_the_helpers_shapes() {
    let api = ["--rabbitmq-api", "http://guest:guest@127.0.0.1:15681"];
    let rabbit = RabbitMq::connect(rabbit_urls()).await.unwrap();
    let p = unique("cdoc");
    let ch = rabbit.channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // One member on a 3-node cluster; a source whose DLQ is classic.
    let single = format!("{p}-single");
    let src = format!("{p}-src");
    let dlq = format!("{src}.dlq");
    ch.queue_declare(single.as_str().into(), durable, quorum_args(Some(1)))
        .await
        .unwrap();
    ch.queue_declare(src.as_str().into(), durable, quorum_args(None))
        .await
        .unwrap();
    ch.queue_declare(dlq.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let (status, f) = doctor(&api, &p);
    assert_eq!(status, 2, "{f:#?}");
    let weak =
        find(&f, &single, "1 member(s) on a cluster of 3").unwrap_or_else(|| panic!("{f:#?}"));
    assert!(
        weak["fix"].as_str().is_some_and(
            |fix| fix.contains(&format!("rabbitmq-queues add_member -p / {single} bs-c"))
        ),
        "{weak:#?}"
    );
    assert!(find(&f, &dlq, "while its source").is_some(), "{f:#?}");

    let safe = unique("csafe");
    rabbit
        .declare(&Topology::quorum(&safe).retry_tiers([std::time::Duration::from_secs(5)]))
        .await
        .unwrap();
    let (status, f) = doctor(&api, &safe);
    assert_eq!(status, 0, "the helpers' shapes pass: {f:#?}");
    for q in [&single, &src, &dlq] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    rabbit.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_kafka_doctor_flags_weak_topics_and_passes_the_helpers_shapes() {
    let brokers = kafka_brokers();
    let target = ["--kafka", brokers.as_str(), "--group", "g"];
    let k = Kafka::new(brokers.clone(), "g");
    let topics = k.topics().unwrap();
    let p = unique("cdoc");
    let weak = format!("{p}-weak");
    let src = format!("{p}-src");
    let dlq = format!("{src}.g.dlq");
    topics
        .create(&[
            TopicSpec::new(&weak).replication(1).min_insync_replicas(1),
            TopicSpec::new(&src),
            TopicSpec::new(&dlq)
                .replication(2)
                .min_insync_replicas(1)
                .config("retention.ms", "-1"),
        ])
        .await
        .unwrap();
    let (status, f) = doctor(&target, &p);
    assert_eq!(status, 2, "{f:#?}");
    assert!(
        find(&f, &weak, "replication factor 1 < 3").is_some(),
        "{f:#?}"
    );
    assert!(
        find(&f, &weak, "min.insync.replicas 1 < 2").is_some(),
        "{f:#?}"
    );
    assert!(
        find(&f, &dlq, "DLQ weaker than its source").is_some(),
        "{f:#?}"
    );

    // The helper's shapes, with ordered retries' parked topic among them:
    // a companion topic, not a consumed one that lacks a DLQ.
    let safe = unique("csafe");
    let ordered = Kafka::new(brokers.clone(), "g")
        .exactly_once("doctor")
        .ordered_retries();
    ordered
        .ensure_topics([TopicSpec::new(&safe).partitions(2)])
        .await
        .unwrap();
    let parked = backstop_kafka::parked_topic(&safe, "g");
    assert!(
        topics.partitions(&parked).await.unwrap().is_some(),
        "ensure_topics made {parked}"
    );
    let (status, f) = doctor(&target, &safe);
    assert_eq!(status, 0, "{f:#?}");
    assert!(
        f.is_empty(),
        "replication 3 / min.insync.replicas 2 pass: {f:#?}"
    );
    topics.delete(&[&weak, &src, &dlq]).await.unwrap();
}
