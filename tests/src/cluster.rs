//! The 3-node clusters of the `on_a_cluster_*` suites
//! (`scripts/services/rabbitmq-cluster.sh`, `scripts/services/kafka-cluster.sh`):
//! where they listen, and killing and restarting their nodes.

use std::time::Instant;

/// Orders per cluster suite: `BACKSTOP_CLUSTER_ORDERS`, default 5,000.
pub fn orders() -> usize {
    crate::env_usize("BACKSTOP_CLUSTER_ORDERS", 5_000)
}

/// Worker kills per cluster suite: `BACKSTOP_CLUSTER_KILLS`, default 2.
pub fn kills() -> usize {
    crate::env_usize("BACKSTOP_CLUSTER_KILLS", 2)
}

/// The RabbitMQ cluster's AMQP URLs, comma-separated
/// (`BACKSTOP_RABBITMQ_CLUSTER_URLS`, else nodes 5681–5683 of this host).
pub fn rabbitmq_urls() -> String {
    std::env::var("BACKSTOP_RABBITMQ_CLUSTER_URLS").unwrap_or_else(|_| {
        (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The same node list starting at node `first` (0-based), so each worker
/// of a fleet connects to another node first.
pub fn rotated(urls: &str, first: usize) -> String {
    let mut list: Vec<&str> = urls.split(',').collect();
    let len = list.len().max(1);
    list.rotate_left(first % len);
    list.join(",")
}

/// The Kafka cluster's bootstrap servers (`BACKSTOP_KAFKA_CLUSTER_BROKERS`,
/// else brokers 19092–19094 of this host).
pub fn kafka_brokers() -> String {
    std::env::var("BACKSTOP_KAFKA_CLUSTER_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094".to_owned())
}

/// Runs `scripts/services/<script> <args>` and returns its output.
///
/// # Panics
///
/// When the script fails: the suite cannot go on without its cluster.
pub async fn service(script: &str, args: &[&str]) -> String {
    let path = format!(
        "{}/../scripts/services/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut all = vec![path.as_str()];
    all.extend_from_slice(args);
    crate::run_command("bash", &all)
        .await
        .unwrap_or_else(|e| panic!("{script} {args:?}: {e}"))
}

/// Kills node `n` (1-based) of the cluster with kill -9, waits `down` and
/// starts it again (the script waits until it answers).
pub async fn kill_and_restart(script: &str, n: usize, down: std::time::Duration) {
    let started = Instant::now();
    let node = n.to_string();
    service(script, &["kill", &node]).await;
    eprintln!("{script}: node {n} killed (kill -9)");
    tokio::time::sleep(down).await;
    service(script, &["restart", &node]).await;
    eprintln!(
        "{script}: node {n} killed and back in {:?}",
        started.elapsed()
    );
}

/// The node (1-based) that leads the RabbitMQ quorum queue `queue`, read
/// from the management API of the first node that answers.
pub async fn rabbitmq_queue_leader(queue: &str) -> Option<usize> {
    for port in 15681..=15683 {
        let url = format!("http://127.0.0.1:{port}/api/queues/%2f/{queue}");
        let Ok(body) =
            crate::run_command("curl", &["-fsS", "-m", "5", "-u", "guest:guest", &url]).await
        else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = json.get("leader").and_then(|l| l.as_str())?;
        // bs-cN@localhost
        return leader
            .strip_prefix("bs-c")
            .and_then(|rest| rest.split('@').next())
            .and_then(|n| n.parse().ok());
    }
    None
}
