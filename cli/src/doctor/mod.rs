//! `backstop doctor`: audits a live RabbitMQ ([`rabbit`]) and Kafka
//! ([`kafka`]) for the shapes that lose messages, with the fix for each.

pub mod kafka;
pub mod rabbit;

use serde::Serialize;

use crate::Output;
use crate::args::DoctorArgs;
use crate::error::CliError;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Messages can be lost: the doctor exits non-zero.
    High,
    /// A weaker guarantee than backstop's safe shape, or a risk limited by the cluster.
    Warning,
}

/// One risk found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// `rabbitmq` or `kafka`.
    pub broker: &'static str,
    /// The queue, exchange or topic.
    pub object: String,
    /// What the risk is.
    pub risk: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    /// A new finding.
    pub fn new(
        severity: Severity,
        broker: &'static str,
        object: &str,
        risk: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            broker,
            object: object.to_owned(),
            risk: risk.into(),
            fix: fix.into(),
        }
    }
}

/// True when `name` passes the `--prefix` filter.
pub fn selected(prefix: Option<&str>, name: &str) -> bool {
    prefix.is_none_or(|p| name.starts_with(p))
}

/// Runs the audit; exit status 2 when a high-severity risk is found.
pub async fn run(args: &DoctorArgs) -> Result<Output, CliError> {
    if args.rabbitmq_api.is_none() && args.kafka.is_none() {
        return Err(CliError::Usage(
            "give --rabbitmq-api <URL> and/or --kafka <BROKERS> to audit".into(),
        ));
    }
    let mut findings = Vec::new();
    if let Some(api) = &args.rabbitmq_api {
        findings.extend(rabbit::audit(api, &args.vhost, args.prefix.as_deref()).await?);
    }
    if let Some(brokers) = &args.kafka {
        findings.extend(kafka::audit(brokers, args.prefix.as_deref(), &args.groups).await?);
    }
    findings.sort_by(|a, b| (a.severity, &a.object).cmp(&(b.severity, &b.object)));
    let high = findings
        .iter()
        .filter(|f| f.severity == Severity::High)
        .count();
    let text = if args.json {
        serde_json::to_string_pretty(&findings).unwrap_or_default() + "\n"
    } else {
        render(&findings)
    };
    Ok(Output {
        text,
        status: if high > 0 { 2 } else { 0 },
    })
}

fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no loss risks found\n".into();
    }
    let mut out = String::new();
    for f in findings {
        let sev = match f.severity {
            Severity::High => "HIGH",
            Severity::Warning => "WARN",
        };
        out.push_str(&format!(
            "{sev:<5} {:<9} {}\n      risk: {}\n      fix:  {}\n",
            f.broker, f.object, f.risk, f.fix
        ));
    }
    let high = findings
        .iter()
        .filter(|f| f.severity == Severity::High)
        .count();
    out.push_str(&format!("{} finding(s), {high} high\n", findings.len()));
    out
}
