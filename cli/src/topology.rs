//! `backstop topology export|import`: save and rebuild what backstop manages,
//! so a broker that lost its state gets its shape back with one command.
//!
//! The file is one JSON object:
//!
//! ```json
//! {"rabbitmq": {"vhost": "/", "queues": […], "exchanges": […],
//!               "bindings": […], "policies": […]},
//!  "kafka": {"topics": [{"name": "orders", "partitions": 3,
//!                        "replication_factor": 3,
//!                        "configs": {"retention.ms": "…"}}]}}
//! ```
//!
//! RabbitMQ parts are the management API's definitions format
//! (`GET/POST /api/definitions/<vhost>`), without the `vhost` field so they
//! can be imported into another vhost. Kafka topics keep their partition
//! count, replication factor and the configs set on the topic itself (not
//! broker defaults). With `--prefix`, only names starting with it (a binding
//! when its source or destination does). Import creates what is missing and
//! leaves what exists as it is, so it is safe to rerun.

use std::collections::BTreeMap;

use backstop_kafka::rdkafka::ClientConfig;
use backstop_kafka::rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, OwnedResourceSpecifier, ResourceSpecifier,
};
use backstop_kafka::rdkafka::client::DefaultClientContext;
use backstop_kafka::rdkafka::consumer::Consumer as _;
use backstop_kafka::{KafkaConfig, TopicSpec, Topics};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::{TopologyAction, TopologyArgs};
use crate::error::CliError;
use crate::kafka_read;
use crate::rabbit_api::{get_json, request_json};

/// What backstop manages on both brokers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Topology {
    /// RabbitMQ definitions, if a management API was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitDefinitions>,
    /// Kafka topics, if brokers were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaTopics>,
}

/// RabbitMQ queues, exchanges, bindings and policies of one vhost.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RabbitDefinitions {
    /// The vhost they were exported from.
    pub vhost: String,
    /// Queues (definitions format).
    pub queues: Vec<Value>,
    /// Exchanges.
    pub exchanges: Vec<Value>,
    /// Bindings.
    pub bindings: Vec<Value>,
    /// Policies.
    pub policies: Vec<Value>,
}

/// Kafka topics.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KafkaTopics {
    /// One entry per topic.
    pub topics: Vec<KafkaTopic>,
}

/// One Kafka topic's shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct KafkaTopic {
    /// The name.
    pub name: String,
    /// The partition count.
    pub partitions: i32,
    /// The replication factor.
    pub replication_factor: i32,
    /// Configs set on the topic (not defaults).
    pub configs: BTreeMap<String, String>,
}

fn vhost_path(vhost: &str) -> String {
    percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn selected(prefix: Option<&str>, name: &str) -> bool {
    prefix.is_none_or(|p| name.starts_with(p))
}

/// The RabbitMQ definitions of `vhost` whose names start with `prefix`.
pub async fn export_rabbit(
    api: &str,
    vhost: &str,
    prefix: Option<&str>,
) -> Result<RabbitDefinitions, CliError> {
    let all = get_json(api, &format!("/api/definitions/{}", vhost_path(vhost))).await?;
    let pick = |kind: &str, keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        all[kind]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|v| keep(v))
                    .cloned()
                    .map(|mut v| {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("vhost");
                        }
                        v
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let named = |v: &Value| selected(prefix, v["name"].as_str().unwrap_or(""));
    Ok(RabbitDefinitions {
        vhost: vhost.to_owned(),
        queues: pick("queues", &named),
        exchanges: pick("exchanges", &named),
        bindings: pick("bindings", &|v: &Value| {
            selected(prefix, v["source"].as_str().unwrap_or(""))
                || selected(prefix, v["destination"].as_str().unwrap_or(""))
        }),
        policies: pick("policies", &named),
    })
}

/// Declares `defs` in `vhost` through the management API.
pub async fn import_rabbit(
    api: &str,
    vhost: &str,
    defs: &RabbitDefinitions,
) -> Result<(), CliError> {
    let body = serde_json::json!({
        "queues": defs.queues,
        "exchanges": defs.exchanges,
        "bindings": defs.bindings,
        "policies": defs.policies,
    });
    request_json(
        api,
        reqwest::Method::POST,
        &format!("/api/definitions/{}", vhost_path(vhost)),
        Some(&body),
    )
    .await?;
    Ok(())
}

/// The Kafka topics whose names start with `prefix` (internal `__` topics never).
pub async fn export_kafka(brokers: &str, prefix: Option<&str>) -> Result<KafkaTopics, CliError> {
    let b = brokers.to_owned();
    let prefix_owned = prefix.map(str::to_owned);
    let shapes: Vec<(String, i32, i32)> = tokio::task::spawn_blocking(move || {
        let c = kafka_read::reader(&b)?;
        let md = c
            .fetch_metadata(None, kafka_read::TIMEOUT)
            .map_err(CliError::kafka("reading the cluster metadata"))?;
        Ok::<_, CliError>(
            md.topics()
                .iter()
                .filter(|t| {
                    !t.name().starts_with("__") && selected(prefix_owned.as_deref(), t.name())
                })
                .map(|t| {
                    let rf = t
                        .partitions()
                        .iter()
                        .map(|p| p.replicas().len())
                        .min()
                        .unwrap_or(1);
                    (
                        t.name().to_owned(),
                        i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                        i32::try_from(rf).unwrap_or(1),
                    )
                })
                .collect(),
        )
    })
    .await
    .map_err(|e| CliError::Kafka {
        what: "reading metadata".into(),
        reason: e.to_string(),
    })??;
    let mut configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if !shapes.is_empty() {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(CliError::kafka("creating an admin client"))?;
        let specs: Vec<ResourceSpecifier<'_>> = shapes
            .iter()
            .map(|(n, _, _)| ResourceSpecifier::Topic(n))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(kafka_read::TIMEOUT));
        for r in admin
            .describe_configs(&specs, &opts)
            .await
            .map_err(CliError::kafka("describing topics"))?
        {
            let r = r.map_err(|e| CliError::Kafka {
                what: "describing a topic".into(),
                reason: e.to_string(),
            })?;
            let OwnedResourceSpecifier::Topic(name) = &r.specifier else {
                continue;
            };
            configs.insert(
                name.clone(),
                r.entries
                    .iter()
                    .filter(|e| matches!(e.source, ConfigSource::DynamicTopic) && !e.is_sensitive)
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect(),
            );
        }
    }
    Ok(KafkaTopics {
        topics: shapes
            .into_iter()
            .map(|(name, partitions, replication_factor)| KafkaTopic {
                configs: configs.remove(&name).unwrap_or_default(),
                name,
                partitions,
                replication_factor,
            })
            .collect(),
    })
}

/// Creates the topics of `topics` that do not exist (existing ones are kept).
pub async fn import_kafka(brokers: &str, topics: &KafkaTopics) -> Result<(), CliError> {
    let specs: Vec<TopicSpec> = topics
        .topics
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                TopicSpec::new(&t.name)
                    .partitions(t.partitions)
                    .replication(t.replication_factor),
                |spec, (k, v)| spec.config(k, v),
            )
        })
        .collect();
    let admin =
        Topics::new(&KafkaConfig::new(brokers, "backstop-cli")).map_err(|e| CliError::Kafka {
            what: "creating an admin client".into(),
            reason: e.to_string(),
        })?;
    admin.create(&specs).await.map_err(|e| CliError::Kafka {
        what: "creating topics".into(),
        reason: e.to_string(),
    })
}

fn need_a_broker() -> CliError {
    CliError::Usage(format!(
        "give --rabbitmq-api <URL> (or {}) and/or --kafka <BROKERS> (or {})",
        crate::args::RABBITMQ_API_ENV,
        crate::args::KAFKA_BROKERS_ENV
    ))
}

fn counts(t: &Topology) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &t.rabbitmq {
        parts.push(format!(
            "{} queue(s), {} exchange(s), {} binding(s), {} policy(ies)",
            r.queues.len(),
            r.exchanges.len(),
            r.bindings.len(),
            r.policies.len()
        ));
    }
    if let Some(k) = &t.kafka {
        parts.push(format!("{} topic(s)", k.topics.len()));
    }
    parts.join(", ")
}

/// Runs one `topology` action; returns what to print.
pub async fn run(action: &TopologyAction) -> Result<String, CliError> {
    match action {
        TopologyAction::Export { brokers, out } => {
            let TopologyArgs {
                rabbitmq_api,
                vhost,
                kafka,
                prefix,
            } = brokers;
            if rabbitmq_api.is_none() && kafka.is_none() {
                return Err(need_a_broker());
            }
            let mut topology = Topology::default();
            if let Some(api) = rabbitmq_api {
                topology.rabbitmq = Some(export_rabbit(api, vhost, prefix.as_deref()).await?);
            }
            if let Some(b) = kafka {
                topology.kafka = Some(export_kafka(b, prefix.as_deref()).await?);
            }
            let text = serde_json::to_string_pretty(&topology).map_err(|e| CliError::Io {
                path: out.clone(),
                source: e.into(),
            })?;
            std::fs::write(out, text + "\n").map_err(|source| CliError::Io {
                path: out.clone(),
                source,
            })?;
            Ok(format!("exported {} to {out}\n", counts(&topology)))
        }
        TopologyAction::Import { brokers, input } => {
            let text = std::fs::read_to_string(input).map_err(|source| CliError::Io {
                path: input.clone(),
                source,
            })?;
            let topology: Topology = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{input} is not a topology export: {e}")))?;
            let mut done = Topology::default();
            match (&topology.rabbitmq, &brokers.rabbitmq_api) {
                (Some(defs), Some(api)) => {
                    import_rabbit(api, &brokers.vhost, defs).await?;
                    done.rabbitmq = topology.rabbitmq;
                }
                (Some(_), None) => {
                    return Err(CliError::Usage(format!(
                        "{input} holds RabbitMQ definitions: give --rabbitmq-api <URL>"
                    )));
                }
                _ => {}
            }
            match (&topology.kafka, &brokers.kafka) {
                (Some(topics), Some(b)) => {
                    import_kafka(b, topics).await?;
                    done.kafka = topology.kafka;
                }
                (Some(_), None) => {
                    return Err(CliError::Usage(format!(
                        "{input} holds Kafka topics: give --kafka <BROKERS>"
                    )));
                }
                _ => {}
            }
            Ok(format!("imported {} from {input}\n", counts(&done)))
        }
    }
}
