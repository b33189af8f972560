//! The RabbitMQ audit, over the management HTTP API.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::doctor::{Finding, Severity, selected};
use crate::error::CliError;
use crate::rabbit_api::get_json;

const B: &str = "rabbitmq";

fn vhost_path(vhost: &str) -> String {
    vhost
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Audits the queues of `vhost` whose name starts with `prefix`.
pub async fn audit(api: &str, vhost: &str, prefix: Option<&str>) -> Result<Vec<Finding>, CliError> {
    let v = vhost_path(vhost);
    let queues = get_json(api, &format!("/api/queues/{v}")).await?;
    let exchanges = get_json(api, &format!("/api/exchanges/{v}")).await?;
    let bindings = get_json(api, &format!("/api/bindings/{v}")).await?;
    // The cluster's nodes, for the quorum queues' members (a user without
    // the monitoring tag may not read them: then those checks are skipped).
    let nodes = get_json(api, "/api/nodes").await.ok();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let by_name: HashMap<String, Value> = list(&queues)
        .into_iter()
        .filter_map(|q| Some((q["name"].as_str()?.to_owned(), q)))
        .collect();
    let queue_names: HashSet<String> = list(&queues)
        .iter()
        .filter_map(|q| q["name"].as_str().map(str::to_owned))
        .collect();
    let exchange_names: HashSet<String> = list(&exchanges)
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let bound: HashSet<String> = list(&bindings)
        .iter()
        .filter_map(|b| b["source"].as_str().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for q in list(&queues) {
        let name = q["name"].as_str().unwrap_or_default();
        if name.starts_with("amq.")
            || !selected(prefix, name)
            || q["exclusive"].as_bool() == Some(true)
        {
            continue;
        }
        let args = &q["arguments"];
        let arg = |k: &str| args[k].as_str().map(str::to_owned);
        let kind = q["type"].as_str().unwrap_or("classic");
        let companion = name.ends_with(".dlq") || name.contains(".retry.");
        if q["durable"].as_bool() == Some(false) {
            out.push(Finding::new(
                Severity::High,
                B,
                name,
                "non-durable queue: its messages are lost when the broker restarts",
                "declare it durable, as a quorum queue (Topology::quorum)",
            ));
        }
        if kind == "classic" {
            out.push(Finding::new(
                Severity::Warning,
                B,
                name,
                "classic queue: not replicated, no delivery limit, no at-least-once dead-lettering",
                "use a quorum queue (Topology::quorum)",
            ));
        }
        let dlx = arg("x-dead-letter-exchange");
        if dlx.is_none() && !companion {
            out.push(Finding::new(
                Severity::High,
                B,
                name,
                "no dead-letter exchange: rejected, expired or over-delivered messages are dropped",
                "set x-dead-letter-exchange (Topology declares <queue>.dlx bound to <queue>.dlq)",
            ));
        }
        if kind == "quorum" && !companion && args.get("x-delivery-limit").is_none_or(Value::is_null)
        {
            out.push(Finding::new(Severity::Warning, B, name, "quorum queue without x-delivery-limit: a poison message is redelivered forever (RabbitMQ 3) or dropped after 20 deliveries (RabbitMQ 4 default)", "set x-delivery-limit above backstop's max attempts, with a DLX"));
        }
        if arg("x-dead-letter-strategy").as_deref() == Some("at-least-once")
            && arg("x-overflow").as_deref() != Some("reject-publish")
        {
            out.push(Finding::new(Severity::High, B, name, "at-least-once dead-lettering without x-overflow=reject-publish falls back to at-most-once: dead letters can be dropped", "set x-overflow=reject-publish"));
        }
        if let Some(nodes) = &nodes {
            out.extend(cluster_findings(&q, vhost, &list(nodes)));
        }
        if let Some(dlq) = by_name.get(&format!("{name}.dlq")) {
            out.extend(weaker_dlq(&q, dlq));
        }
        if let Some(dlx) = dlx {
            if dlx.is_empty() {
                let target = arg("x-dead-letter-routing-key").unwrap_or_else(|| name.to_owned());
                if !queue_names.contains(&target) {
                    out.push(Finding::new(Severity::High, B, name, format!("dead letters go through the default exchange to queue {target:?}, which does not exist: they are dropped"), format!("declare queue {target:?}")));
                }
            } else if !exchange_names.contains(&dlx) {
                out.push(Finding::new(
                    Severity::High,
                    B,
                    name,
                    format!(
                        "dead-letter exchange {dlx:?} does not exist: dead letters are dropped"
                    ),
                    format!("declare exchange {dlx:?} and bind a DLQ to it"),
                ));
            } else if !bound.contains(&dlx) {
                out.push(Finding::new(
                    Severity::High,
                    B,
                    name,
                    format!(
                        "dead-letter exchange {dlx:?} has no bound queue: dead letters are dropped"
                    ),
                    format!("bind a DLQ to {dlx:?}"),
                ));
            }
        }
    }
    Ok(out)
}

/// The names in a JSON array of strings.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Replication on a cluster: a quorum queue with fewer members than the
/// cluster can give it, members on down nodes, classic mirroring.
fn cluster_findings(q: &Value, vhost: &str, nodes: &[Value]) -> Vec<Finding> {
    let name = q["name"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    let running: Vec<String> = nodes
        .iter()
        .filter(|n| n["running"].as_bool() == Some(true))
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    let all: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    if q["type"].as_str() == Some("quorum") {
        let members = names(&q["members"]);
        let wanted = all.len().min(3);
        if !members.is_empty() && members.len() < wanted {
            let adds: Vec<String> = running
                .iter()
                .filter(|n| !members.contains(n))
                .take(wanted - members.len())
                .map(|n| format!("rabbitmq-queues add_member -p {vhost} {name} {n}"))
                .collect();
            out.push(Finding::new(
                Severity::High,
                B,
                name,
                format!(
                    "quorum queue with {} member(s) on a cluster of {} nodes: a node loss can lose its messages or stop it",
                    members.len(),
                    all.len()
                ),
                if adds.is_empty() {
                    format!("add members on the other nodes (rabbitmq-queues add_member -p {vhost} {name} <node>)")
                } else {
                    adds.join("; ")
                },
            ));
        }
        let down: Vec<&String> = members.iter().filter(|m| !running.contains(m)).collect();
        if !down.is_empty() {
            let list = down
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            out.push(Finding::new(
                Severity::Warning,
                B,
                name,
                format!("quorum queue members on down nodes ({list}): it survives fewer further failures"),
                format!(
                    "restart {list}, or move the members: rabbitmq-queues delete_member -p {vhost} {name} <down node>, then add_member on a running node"
                ),
            ));
        }
    }
    if q["effective_policy_definition"]["ha-mode"].is_string() {
        out.push(Finding::new(
            Severity::Warning,
            B,
            name,
            "classic mirrored queue (ha-mode policy): mirroring is deprecated and can lose confirmed messages when a mirror is promoted",
            "move the messages to a quorum queue (Topology::quorum) and remove the ha-mode policy",
        ));
    }
    out
}

/// A DLQ weaker than its source: classic under a quorum source, or fewer members.
fn weaker_dlq(source: &Value, dlq: &Value) -> Vec<Finding> {
    let name = dlq["name"].as_str().unwrap_or_default();
    let source_name = source["name"].as_str().unwrap_or_default();
    if source["type"].as_str() != Some("quorum") {
        return Vec::new();
    }
    if dlq["type"].as_str() != Some("quorum") {
        return vec![Finding::new(
            Severity::High,
            B,
            name,
            format!(
                "DLQ is a {} queue while its source {source_name:?} is a quorum queue: a node loss can lose dead letters",
                dlq["type"].as_str().unwrap_or("classic")
            ),
            "recreate the DLQ as a quorum queue (Topology::quorum declares it so) after draining it",
        )];
    }
    let (have, want) = (
        names(&dlq["members"]).len(),
        names(&source["members"]).len(),
    );
    if have < want {
        return vec![Finding::new(
            Severity::High,
            B,
            name,
            format!(
                "DLQ has {have} member(s), fewer than its source {source_name:?} ({want}): dead letters are less safe than the messages"
            ),
            format!(
                "rabbitmq-queues add_member {name} <node> for each node of {source_name:?} it lacks"
            ),
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_quorum_queue_short_of_members_or_with_members_down_is_flagged() {
        let nodes = [
            json!({"name": "a@h", "running": true}),
            json!({"name": "b@h", "running": true}),
            json!({"name": "c@h", "running": false}),
        ];
        let q = json!({"name": "q", "type": "quorum", "members": ["a@h", "c@h"]});
        let f = cluster_findings(&q, "/", &nodes);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].severity, Severity::High);
        assert!(f[0].fix.contains("add_member -p / q b@h"), "{}", f[0].fix);
        assert!(f[1].risk.contains("c@h"), "{}", f[1].risk);
        let full = json!({"name": "q", "type": "quorum", "members": ["a@h", "b@h", "c@h"]});
        let up = nodes.clone().map(|mut n| {
            n["running"] = json!(true);
            n
        });
        let f = cluster_findings(&full, "/", &up);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn mirroring_and_a_weaker_dlq_are_flagged() {
        let mirrored = json!({"name": "m", "type": "classic", "effective_policy_definition": {"ha-mode": "all"}});
        let f = cluster_findings(&mirrored, "/", &[]);
        assert!(f.iter().any(|f| f.risk.contains("mirrored")), "{f:?}");
        let source = json!({"name": "s", "type": "quorum", "members": ["a", "b", "c"]});
        let classic = json!({"name": "s.dlq", "type": "classic"});
        assert_eq!(weaker_dlq(&source, &classic)[0].severity, Severity::High);
        let small = json!({"name": "s.dlq", "type": "quorum", "members": ["a"]});
        assert!(
            weaker_dlq(&source, &small)[0]
                .risk
                .contains("fewer than its source")
        );
        assert!(weaker_dlq(&source, &source).is_empty());
    }
}
