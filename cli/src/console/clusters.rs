//! The DLQs the console manages: every `<queue>.dlq` of the configured
//! RabbitMQ vhosts (from the management API) and every `<topic>.<group>.dlq`
//! of the configured Kafka clusters (from the metadata), with their depth.

use std::time::Duration;

use super::config::{ConsoleConfig, KafkaCluster, RabbitCluster};
use crate::dlq::Dlq;
use crate::error::CliError;
use crate::kafka_read;

/// Which broker a DLQ lives on, with its connection settings.
#[derive(Debug, Clone)]
pub enum Broker {
    /// A RabbitMQ vhost.
    Rabbit(RabbitCluster),
    /// A Kafka cluster.
    Kafka(KafkaCluster),
}

/// One DLQ the console manages.
#[derive(Debug, Clone)]
pub struct DlqRef {
    /// The configured name of its broker (`rabbitmq`, `kafka`, …).
    pub cluster: String,
    /// The queue or topic.
    pub name: String,
    /// Where it lives.
    pub broker: Broker,
}

impl DlqRef {
    /// `RabbitMQ` or `Kafka`.
    pub fn kind(&self) -> &'static str {
        match self.broker {
            Broker::Rabbit(_) => "RabbitMQ",
            Broker::Kafka(_) => "Kafka",
        }
    }

    /// True for a Kafka topic.
    pub fn is_kafka(&self) -> bool {
        matches!(self.broker, Broker::Kafka(_))
    }

    /// `<cluster>/<name>`: unique among the console's DLQs.
    pub fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.name)
    }

    /// Connects to it through the DLQ library.
    pub async fn open(&self) -> Result<Dlq, CliError> {
        match &self.broker {
            Broker::Rabbit(r) => {
                let budget = crate::time::parse_duration("hold_budget", &r.hold_budget)?;
                Dlq::rabbit(&r.url, &self.name, budget).await
            }
            Broker::Kafka(k) => Dlq::kafka(&k.brokers, &self.name).await,
        }
    }
}

/// A DLQ found, with the letters its broker says it holds (Kafka: records,
/// replayed and purged ones included).
#[derive(Debug, Clone)]
pub struct Found {
    /// The DLQ.
    pub at: DlqRef,
    /// The broker's count, if it answered.
    pub depth: Option<u64>,
}

/// Every DLQ found, and the brokers that could not be asked (by name).
#[derive(Debug, Default)]
pub struct Discovery {
    /// The DLQs, by broker then name.
    pub found: Vec<Found>,
    /// Brokers that failed, with the reason (no credential in it).
    pub errors: Vec<(String, String)>,
}

/// Looks for the DLQs of every configured broker.
pub async fn discover(config: &ConsoleConfig) -> Discovery {
    let mut out = Discovery::default();
    for r in &config.rabbitmq {
        match rabbit_dlqs(r).await {
            Ok(found) => out.found.extend(found),
            Err(e) => out.errors.push((r.name.clone(), redacted(&e))),
        }
    }
    for k in &config.kafka {
        let k2 = k.clone();
        let found = tokio::task::spawn_blocking(move || kafka_dlqs(&k2))
            .await
            .unwrap_or_else(|e| {
                Err(CliError::Kafka {
                    what: "listing topics".into(),
                    reason: e.to_string(),
                })
            });
        match found {
            Ok(found) => out.found.extend(found),
            Err(e) => out.errors.push((k.name.clone(), redacted(&e))),
        }
    }
    out
}

fn redacted(e: &CliError) -> String {
    crate::redact::redact_all(&e.to_string())
}

async fn rabbit_dlqs(r: &RabbitCluster) -> Result<Vec<Found>, CliError> {
    let vhost =
        percent_encoding::utf8_percent_encode(&r.vhost(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let queues = crate::rabbit_api::get_json(
        &r.api,
        &format!("/api/queues/{vhost}?columns=name,messages"),
    )
    .await?;
    let mut found: Vec<Found> = queues
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| {
            let name = q["name"].as_str()?;
            (name.ends_with(".dlq") && name.starts_with(&r.prefix)).then(|| Found {
                at: DlqRef {
                    cluster: r.name.clone(),
                    name: name.to_owned(),
                    broker: Broker::Rabbit(r.clone()),
                },
                depth: q["messages"].as_u64(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.at.name.cmp(&b.at.name));
    Ok(found)
}

/// How long listing the topics may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn kafka_dlqs(k: &KafkaCluster) -> Result<Vec<Found>, CliError> {
    use backstop_kafka::rdkafka::consumer::Consumer as _;
    let consumer = kafka_read::reader(&k.brokers)?;
    let md = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(CliError::kafka("listing topics"))?;
    let mut found = Vec::new();
    for t in md.topics() {
        let name = t.name();
        if !name.ends_with(".dlq") || !name.starts_with(&k.prefix) {
            continue;
        }
        let mut depth = Some(0u64);
        for p in t.partitions() {
            let held = consumer
                .fetch_watermarks(name, p.id(), kafka_read::TIMEOUT)
                .ok()
                .map(|(low, high)| u64::try_from(high - low).unwrap_or(0));
            depth = depth.zip(held).map(|(a, b)| a + b);
        }
        found.push(Found {
            at: DlqRef {
                cluster: k.name.clone(),
                name: name.to_owned(),
                broker: Broker::Kafka(k.clone()),
            },
            depth,
        });
    }
    found.sort_by(|a, b| a.at.name.cmp(&b.at.name));
    Ok(found)
}
