//! The Kafka audit, over the metadata and admin APIs.

use std::collections::{BTreeMap, BTreeSet};

use backstop_kafka::rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use backstop_kafka::rdkafka::client::DefaultClientContext;
use backstop_kafka::rdkafka::consumer::Consumer;

use crate::doctor::{Finding, Severity, selected};
use crate::error::CliError;
use crate::kafka_read;

const B: &str = "kafka";

/// One of backstop's own topics beside a consumed one (the adapter's, or a
/// replay epoch's): not audited as a consumed topic.
fn is_companion(name: &str) -> bool {
    backstop_kafka::is_companion_topic(name) || backstop_kafka::is_epoch_topic(name)
}

/// Audits the topics whose name starts with `prefix`; `groups` must each have a DLQ per topic.
pub async fn audit(
    brokers: &str,
    prefix: Option<&str>,
    groups: &[String],
) -> Result<Vec<Finding>, CliError> {
    let b = brokers.to_owned();
    let (cluster, topics) = tokio::task::spawn_blocking(move || {
        let c = kafka_read::reader(&b)?;
        let md = c
            .fetch_metadata(None, kafka_read::TIMEOUT)
            .map_err(CliError::kafka("reading the cluster metadata"))?;
        let topics: BTreeMap<String, (usize, usize)> = md
            .topics()
            .iter()
            .map(|t| {
                let rf = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0);
                (t.name().to_owned(), (t.partitions().len(), rf))
            })
            .collect();
        Ok::<_, CliError>((md.brokers().len(), topics))
    })
    .await
    .map_err(|e| CliError::Kafka {
        what: "reading metadata".into(),
        reason: e.to_string(),
    })??;
    let topics: BTreeMap<String, (usize, usize)> = topics
        .into_iter()
        .filter(|(n, _)| !n.starts_with("__") && selected(prefix, n))
        .collect();
    let admin: AdminClient<DefaultClientContext> = crate::kafka_options::client_config(brokers)
        .create()
        .map_err(CliError::kafka("creating an admin client"))?;
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.keys().map(|t| ResourceSpecifier::Topic(t)).collect();
    let mut configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // Per topic, the configs it inherits from the broker.
    let mut inherited: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if !specs.is_empty() {
        let opts = AdminOptions::new().request_timeout(Some(kafka_read::TIMEOUT));
        for r in admin
            .describe_configs(&specs, &opts)
            .await
            .map_err(CliError::kafka("describing topics"))?
            .into_iter()
            .flatten()
        {
            let name = match &r.specifier {
                backstop_kafka::rdkafka::admin::OwnedResourceSpecifier::Topic(t) => t.clone(),
                _ => continue,
            };
            inherited.insert(
                name.clone(),
                r.entries
                    .iter()
                    .filter(|e| e.is_default)
                    .map(|e| e.name.clone())
                    .collect(),
            );
            configs.insert(
                name,
                r.entries
                    .iter()
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect(),
            );
        }
    }
    let small = |needed: usize| {
        if cluster >= needed {
            Severity::High
        } else {
            Severity::Warning
        }
    };
    let note = |needed: usize| {
        if cluster >= needed {
            String::new()
        } else {
            format!(" (the cluster has only {cluster} broker(s), so this cannot be fixed here)")
        }
    };
    let mut out = Vec::new();
    for (name, (partitions, rf)) in &topics {
        let cfg = configs.get(name).cloned().unwrap_or_default();
        if *rf < 3 {
            out.push(Finding::new(
                small(3),
                B,
                name,
                format!(
                    "replication factor {rf} < 3: a broker loss can lose acknowledged messages{}",
                    note(3)
                ),
                "recreate or reassign with replication factor 3 (TopicSpec::replication(3))",
            ));
        }
        let isr = min_isr(Some(&cfg));
        if isr < 2 {
            out.push(Finding::new(
                small(2),
                B,
                name,
                format!(
                    "min.insync.replicas {isr} < 2: acks=all is acknowledged by a single replica{}",
                    note(2)
                ),
                "set min.insync.replicas=2 (TopicSpec::min_insync_replicas(2))",
            ));
        }
        if cfg
            .get("unclean.leader.election.enable")
            .map(String::as_str)
            == Some("true")
        {
            out.push(Finding::new(Severity::High, B, name, "unclean.leader.election.enable=true: an out-of-sync replica can become leader and drop acknowledged messages", "set unclean.leader.election.enable=false"));
        }
        if name.ends_with(".dlq") {
            out.extend(dlq_retention(
                name,
                &cfg,
                inherited.get(name).cloned().unwrap_or_default(),
            ));
        }
        if let Some(stem) = name.strip_suffix(".dlq") {
            // The source is the longest existing topic T with stem = T.<group>.
            let source = topics
                .iter()
                .filter(|(t, _)| {
                    stem.strip_prefix(t.as_str())
                        .is_some_and(|r| r.starts_with('.') && r.len() > 1)
                })
                .max_by_key(|(t, _)| t.len());
            if let Some((src, (_, src_rf))) = source {
                let src_isr = min_isr(configs.get(src));
                if rf < src_rf || isr < src_isr {
                    out.push(Finding::new(
                        Severity::High,
                        B,
                        name,
                        format!("DLQ weaker than its source {src:?}: replication {rf} / min.insync.replicas {isr} against {src_rf} / {src_isr}: a broker loss can lose dead letters the source would have kept"),
                        format!("kafka-configs --alter --entity-type topics --entity-name {name} --add-config min.insync.replicas={src_isr}; reassign it to {src_rf} replicas (kafka-reassign-partitions)"),
                    ));
                }
            }
            if let Some((src, (src_parts, _))) = source
                && partitions < src_parts
            {
                out.push(Finding::new(Severity::Warning, B, name, format!("DLQ has {partitions} partition(s), fewer than its source {src:?} ({src_parts}): keys and throughput do not map one to one"), format!("add partitions to {src_parts} (Kafka::ensure_topics grows it)")));
            }
        }
        if let Some((stem, _)) = name.split_once(".retry.") {
            let dlq = format!("{stem}.dlq");
            if !topics.contains_key(&dlq) {
                out.push(Finding::new(Severity::High, B, name, format!("retry topic without its DLQ {dlq:?}: exhausted messages cannot be dead-lettered"), format!("create {dlq:?} (Kafka::ensure_topics)")));
            }
        }
        if !is_companion(name) {
            for g in groups {
                let dlq = backstop_kafka::dlq_topic(name, g);
                if !topics.contains_key(&dlq) {
                    out.push(Finding::new(Severity::High, B, name, format!("group {g:?} has no DLQ topic {dlq:?}: its dead letters cannot be written"), format!("create {dlq:?} (Kafka::ensure_topics with group {g:?})")));
                }
            }
        }
    }
    Ok(out)
}

/// A topic's `min.insync.replicas` (1 when unknown).
fn min_isr(cfg: Option<&BTreeMap<String, String>>) -> usize {
    cfg.and_then(|c| c.get("min.insync.replicas"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A DLQ must keep its letters until an operator redrives them: a finite
/// `retention.ms` or `retention.bytes` (its own or the broker's default)
/// deletes them unseen.
fn dlq_retention(
    name: &str,
    cfg: &BTreeMap<String, String>,
    inherited: BTreeSet<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (key, what) in [
        ("retention.ms", "dead letters older than this are deleted"),
        (
            "retention.bytes",
            "the oldest dead letters beyond this size are deleted",
        ),
    ] {
        let Some(value) = cfg.get(key) else { continue };
        if value.parse::<i64>().is_ok_and(|v| v < 0) {
            continue;
        }
        let source = if inherited.contains(key) {
            " (the broker's default)"
        } else {
            ""
        };
        out.push(Finding::new(
            Severity::High,
            B,
            name,
            format!("DLQ with finite {key}={value}{source}: {what} before anyone redrives them"),
            format!(
                "kafka-configs --alter --entity-type topics --entity-name {name} --add-config {key}=-1 (Kafka::ensure_topics creates DLQs so)"
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dlq_with_finite_retention_is_flagged_and_one_kept_forever_is_not() {
        let cfg = |ms: &str| {
            BTreeMap::from([
                ("retention.ms".to_owned(), ms.to_owned()),
                ("retention.bytes".to_owned(), "-1".to_owned()),
            ])
        };
        let default = BTreeSet::from(["retention.ms".to_owned()]);
        let f = dlq_retention("o.g.dlq", &cfg("604800000"), default);
        assert_eq!(f.len(), 1);
        assert!(f[0].risk.contains("broker's default"), "{}", f[0].risk);
        assert!(dlq_retention("o.g.dlq", &cfg("-1"), BTreeSet::new()).is_empty());
    }
}
