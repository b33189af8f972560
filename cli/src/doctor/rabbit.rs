//! The RabbitMQ audit, over the management HTTP API.

use std::collections::HashSet;

use serde_json::Value;

use crate::doctor::{Finding, Severity, selected};
use crate::error::CliError;
use crate::http::get_json;

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
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
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
