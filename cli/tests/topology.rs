//! `backstop topology export|import` against the real brokers: export,
//! delete, import, and the same shape is back.

mod common;

use std::time::Duration;

use backstop_cli::rabbit_api::{get_json, request_json};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_rabbitmq::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

const API: &str = "http://guest:guest@127.0.0.1:15672";

async fn queue_type(queue: &str) -> Option<String> {
    get_json(API, &format!("/api/queues/%2F/{queue}"))
        .await
        .ok()
        .and_then(|q| q["arguments"]["x-queue-type"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_topology_comes_back_after_deletion() {
    let p = unique("topo");
    let rabbit = RabbitMq::connect(amqp()).await.unwrap();
    rabbit.declare(&Topology::quorum(&p)).await.unwrap();
    let policy = format!("{p}-policy");
    request_json(
        API,
        reqwest::Method::PUT,
        &format!("/api/policies/%2F/{policy}"),
        Some(&serde_json::json!({
            "pattern": format!("^{p}\\.never$"),
            "definition": {"max-length": 1000},
            "apply-to": "queues",
            "priority": 0
        })),
    )
    .await
    .unwrap();
    let file = std::env::temp_dir().join(format!("{p}-topology.json"));
    let path = file.to_str().unwrap();
    let out = cli_ok(&[
        "topology",
        "export",
        "--rabbitmq-api",
        API,
        "--prefix",
        &p,
        "--out",
        path,
    ]);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let queues: Vec<String> = saved["rabbitmq"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    let dlq = format!("{p}.dlq");
    assert!(
        queues.contains(&p) && queues.contains(&dlq),
        "{out}: {queues:?}"
    );
    let exchanges: Vec<String> = saved["rabbitmq"]["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(saved["rabbitmq"]["policies"].as_array().unwrap().len(), 1);

    // The broker loses it all.
    let ch = rabbit.channel().await.unwrap();
    for q in &queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    for e in &exchanges {
        ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    request_json(
        API,
        reqwest::Method::DELETE,
        &format!("/api/policies/%2F/{policy}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(queue_type(&p).await, None);

    for _ in 0..2 {
        let out = cli_ok(&["topology", "import", "--rabbitmq-api", API, "--in", path]);
        assert!(out.contains("imported"), "{out}");
    }
    assert_eq!(queue_type(&p).await.as_deref(), Some("quorum"));
    assert_eq!(queue_type(&dlq).await.as_deref(), Some("quorum"));
    let again = get_json(API, "/api/definitions/%2F").await.unwrap();
    let bindings = again["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["source"].as_str().unwrap_or("").starts_with(&p)
                || b["destination"].as_str().unwrap_or("").starts_with(&p)
        })
        .count();
    assert_eq!(
        bindings,
        saved["rabbitmq"]["bindings"].as_array().unwrap().len()
    );
    assert!(
        get_json(API, &format!("/api/policies/%2F/{policy}"))
            .await
            .is_ok()
    );
    // The worker's own declaration still agrees with the restored shape.
    rabbit.declare(&Topology::quorum(&p)).await.unwrap();

    let ch = rabbit.channel().await.unwrap();
    for q in &queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in &exchanges {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = request_json(
        API,
        reqwest::Method::DELETE,
        &format!("/api/policies/%2F/{policy}"),
        None,
    )
    .await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topics_come_back_with_their_configs() {
    let p = unique("ktopo");
    let k = Kafka::new(brokers(), "unused");
    let topics = k.topics().unwrap();
    let topic = format!("{p}-orders");
    topics
        .create(&[TopicSpec::new(&topic)
            .partitions(3)
            .config("retention.ms", "123456789")
            .config("cleanup.policy", "compact")])
        .await
        .unwrap();
    let file = std::env::temp_dir().join(format!("{p}-topology.json"));
    let path = file.to_str().unwrap();
    let b = brokers();
    cli_ok(&[
        "topology", "export", "--kafka", &b, "--prefix", &p, "--out", path,
    ]);
    let saved = std::fs::read_to_string(&file).unwrap();
    let value: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let t = &value["kafka"]["topics"][0];
    assert_eq!(t["name"], topic.as_str(), "{saved}");
    assert_eq!(t["partitions"], 3, "{saved}");
    assert_eq!(t["configs"]["retention.ms"], "123456789", "{saved}");

    topics.delete(&[&topic]).await.unwrap();
    let gone = tokio::time::Instant::now() + Duration::from_secs(30);
    while topics.partitions(&topic).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < gone, "topic not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deletion finishes asynchronously on the broker: retry until created.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(&["topology", "import", "--kafka", &b, "--in", path]);
        if out.status.success() && topics.partitions(&topic).await.unwrap() == Some(3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cli_ok(&[
        "topology", "export", "--kafka", &b, "--prefix", &p, "--out", path,
    ]);
    let restored = std::fs::read_to_string(&file).unwrap();
    assert_eq!(restored, saved, "the same shape and configs");
    topics.delete(&[&topic]).await.unwrap();
    let _ = std::fs::remove_file(&file);
}
