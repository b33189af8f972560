//! The operations files read as data: the PromQL of the Grafana dashboard
//! (`dashboards/backstop.json`) and of the alert rules
//! (`alerts/backstop.rules.yml`), the metric names it uses, and the metric
//! families a worker's `/metrics` exposes. `tests/dashboards.rs` checks the
//! two against each other.
//!
//! The rules file is read line by line (no YAML parser): each rule keeps its
//! `expr:` on one line, and [`alerts`] fails on a block scalar rather than
//! miss an expression.

use std::collections::{BTreeMap, BTreeSet};

/// The prefix of every backstop metric.
pub const PREFIX: &str = "backstop_";

/// A metric name as an expression uses it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// The metric family: the name without `_bucket`, `_sum` or `_count`.
    pub family: String,
    /// Used as `<family>_bucket`: only a histogram has those series.
    pub needs_buckets: bool,
}

/// The backstop metric names `expr` uses (PromQL, or a Grafana variable
/// query such as `label_values(backstop_messages_total, source)`), ignoring
/// quoted strings (label values, Grafana variables in matchers).
pub fn references(expr: &str) -> BTreeSet<Reference> {
    identifiers(expr)
        .into_iter()
        .filter(|name| name.starts_with(PREFIX))
        .map(|name| {
            let needs_buckets = name.ends_with("_bucket");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            Reference {
                family,
                needs_buckets,
            }
        })
        .collect()
}

/// The identifiers (`[a-zA-Z_:][a-zA-Z0-9_:]*`) of `expr` outside quoted strings.
fn identifiers(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut current = String::new();
    let mut skipping = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            // A word starting with a digit or glued to `$` is no identifier.
            if current.is_empty() && (c.is_ascii_digit() || skipping) {
                skipping = true;
                continue;
            }
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            found.push(std::mem::take(&mut current));
        }
        skipping = c == '$';
        if matches!(c, '"' | '\'' | '`') {
            while let Some(inner) = chars.next() {
                if inner == '\\' && c != '`' {
                    chars.next();
                } else if inner == c {
                    break;
                }
            }
        }
    }
    if !current.is_empty() {
        found.push(current);
    }
    found
}

/// Every PromQL expression of a Grafana dashboard: each panel target's
/// `expr` (rows' nested panels included).
pub fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    collect(dashboard, "expr", &mut exprs);
    exprs
}

/// Every query of the dashboard's template variables (`label_values(…)`).
pub fn dashboard_variable_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    if let Some(list) = dashboard["templating"]["list"].as_array() {
        for variable in list.iter().filter(|v| v["type"] == "query") {
            match &variable["query"] {
                serde_json::Value::String(q) => queries.push(q.clone()),
                other => collect(other, "query", &mut queries),
            }
        }
    }
    queries
}

fn collect(value: &serde_json::Value, key: &str, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == key => into.push(s.clone()),
                    _ => collect(v, key, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, key, into)),
        _ => {}
    }
}

/// One alerting rule as the rules file spells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alert {
    /// `alert:`
    pub name: String,
    /// `expr:`
    pub expr: String,
    /// `for:`, if any.
    pub for_: Option<String>,
    /// Its labels and annotations (`severity`, `summary`, `description`, `runbook`, …).
    pub fields: BTreeMap<String, String>,
}

/// The alerting rules of a Prometheus rules file.
///
/// # Panics
///
/// When an `expr:` is a block scalar (`|`, `>`) or a rule has no `expr:`:
/// this reader would miss (part of) the expression.
pub fn alerts(rules: &str) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    for line in rules.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = unquote(value.trim());
        match key {
            "alert" => alerts.push(Alert {
                name: value,
                ..Alert::default()
            }),
            "record" => {
                panic!("a recording rule ({value}): only alerting rules are read")
            }
            _ => {
                let Some(alert) = alerts.last_mut() else {
                    continue;
                };
                match key {
                    "expr" => {
                        assert!(
                            !value.is_empty() && !value.starts_with(['|', '>']),
                            "the expr of {} is not on its line",
                            alert.name
                        );
                        alert.expr = value;
                    }
                    "for" => alert.for_ = Some(value),
                    "labels" | "annotations" => {}
                    _ if !value.is_empty() => {
                        alert.fields.insert(key.to_owned(), value);
                    }
                    _ => {}
                }
            }
        }
    }
    for alert in &alerts {
        assert!(!alert.expr.is_empty(), "{} has no expr", alert.name);
    }
    alerts
}

/// A YAML scalar without its quotes (`"…"` with `\"` and `\\`, or `'…'` with `''`).
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        value.to_owned()
    }
}

/// What the alert unit tests (`promtool test rules` input) check for each
/// alert: whether some case expects it to fire and some case expects it not to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cases {
    /// An `alert_rule_test` with a non-empty `exp_alerts`.
    pub fires: bool,
    /// An `alert_rule_test` with `exp_alerts: []`.
    pub quiet: bool,
}

/// The cases of a `promtool test rules` file, by alert name.
pub fn alert_cases(tests: &str) -> BTreeMap<String, Cases> {
    let mut cases: BTreeMap<String, Cases> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(unquote(name.trim()));
        } else if let Some(expected) = line.strip_prefix("exp_alerts:")
            && let Some(name) = current.take()
        {
            let case = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                case.quiet = true;
            } else {
                case.fires = true;
            }
        }
    }
    cases
}

/// The anchors GitHub gives the headings of a Markdown file (outside code
/// fences): lower case, spaces to `-`, punctuation other than `-` and `_` dropped.
pub fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let anchor: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

/// The metric families of a Prometheus text exposition and their `# TYPE`
/// (`counter`, `gauge`, `histogram`, `summary`; `untyped` without one).
pub fn families(exposition: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let typed = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|family| families.contains_key(family));
        if !name.is_empty() && !typed {
            families.entry(name).or_insert_with(|| "untyped".to_owned());
        }
    }
    families
}

/// A metric family a worker is expected to expose but did not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Missing {
    /// No series of the family at all.
    Absent(String),
    /// Used with `_bucket` but exposed as another type (a summary has no buckets).
    NoBuckets {
        /// The family.
        family: String,
        /// Its `# TYPE`.
        exposed_as: String,
    },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Absent(family) => write!(f, "{family}"),
            Missing::NoBuckets { family, exposed_as } => {
                write!(f, "{family}_bucket ({family} is exposed as a {exposed_as})")
            }
        }
    }
}

/// The references `exposed` (family → type) does not satisfy.
pub fn missing(
    references: &BTreeSet<Reference>,
    exposed: &BTreeMap<String, String>,
) -> BTreeSet<Missing> {
    references
        .iter()
        .filter_map(|r| match exposed.get(&r.family) {
            None => Some(Missing::Absent(r.family.clone())),
            Some(kind) if r.needs_buckets && kind != "histogram" => Some(Missing::NoBuckets {
                family: r.family.clone(),
                exposed_as: kind.clone(),
            }),
            Some(_) => None,
        })
        .collect()
}

/// `expr` with Grafana's variables replaced so that PromQL tools parse it:
/// `$__rate_interval`, `$__interval` and `$__range` by `5m`, any other
/// `$name` or `${name}` by `.*` (they stand in label matchers' regexes).
pub fn without_grafana_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => match braced.split_once('}') {
                Some((name, tail)) => (name, tail),
                None => (braced, ""),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            _ => ".*",
        });
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<(String, bool)> {
        references(expr)
            .into_iter()
            .map(|r| (r.family, r.needs_buckets))
            .collect()
    }

    #[test]
    fn references_are_backstop_identifiers_outside_strings_without_histogram_suffixes() {
        let expr = r#"histogram_quantile(0.99, sum by (le, op) (rate(backstop_store_duration_seconds_bucket{source=~"$source", queue="backstop_not_a_metric"}[$__rate_interval]))) / on() backstop_x_count + backstop_in_flight{a='backstop_neither'} or $backstop_var"#;
        assert_eq!(
            names(expr),
            vec![
                ("backstop_in_flight".to_owned(), false),
                ("backstop_store_duration_seconds".to_owned(), true),
                ("backstop_x".to_owned(), false),
            ]
        );
        assert_eq!(
            names("label_values(backstop_messages_total{source=~\"$source\"}, group)"),
            vec![("backstop_messages_total".to_owned(), false)]
        );
        assert_eq!(
            names(
                "increase(backstop_ack_failures_total[10m]) > 0 or increase(backstop_commit_failures_total[10m]) > 0"
            ),
            vec![
                ("backstop_ack_failures_total".to_owned(), false),
                ("backstop_commit_failures_total".to_owned(), false),
            ]
        );
    }

    #[test]
    fn dashboard_expressions_and_variable_queries_are_found_in_rows_too() {
        let dashboard = serde_json::json!({
            "panels": [
                {"type": "timeseries", "targets": [{"expr": "a"}, {"expr": "b"}]},
                {"type": "row", "panels": [{"targets": [{"expr": "c"}]}]},
            ],
            "templating": {"list": [
                {"type": "datasource", "query": "prometheus"},
                {"type": "query", "query": {"query": "label_values(m, source)", "refId": "x"}},
                {"type": "query", "query": "label_values(n, group)"},
            ]},
        });
        assert_eq!(dashboard_exprs(&dashboard), ["a", "b", "c"]);
        assert_eq!(
            dashboard_variable_queries(&dashboard),
            ["label_values(m, source)", "label_values(n, group)"]
        );
    }

    #[test]
    fn alerts_are_read_with_their_fields() {
        let rules = r#"
groups:
  - name: g
    rules:
      # a comment: not a rule
      - alert: First
        expr: backstop_ready == 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "Not \"ready\""
          runbook: 'README.md#first'
      - alert: Second
        expr: "backstop_breaker_state >= 2"
"#;
        let alerts = alerts(rules);
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].name, "First");
        assert_eq!(alerts[0].expr, "backstop_ready == 0");
        assert_eq!(alerts[0].for_.as_deref(), Some("5m"));
        assert_eq!(alerts[0].fields["severity"], "critical");
        assert_eq!(alerts[0].fields["summary"], "Not \"ready\"");
        assert_eq!(alerts[0].fields["runbook"], "README.md#first");
        assert_eq!(alerts[1].expr, "backstop_breaker_state >= 2");
        assert_eq!(alerts[1].for_, None);
    }

    #[test]
    #[should_panic(expected = "not on its line")]
    fn a_block_scalar_expr_is_refused() {
        alerts("- alert: A\n  expr: |\n    backstop_ready == 0\n");
    }

    #[test]
    fn alert_cases_tell_firing_from_quiet() {
        let tests = "alert_rule_test:\n  - eval_time: 1m\n    alertname: A\n    exp_alerts: []\n\
                     \x20 - eval_time: 9m\n    alertname: A\n    exp_alerts:\n      - exp_labels: {}\n\
                     \x20 - eval_time: 9m\n    alertname: B\n    exp_alerts: []\n";
        let cases = alert_cases(tests);
        assert_eq!(
            cases["A"],
            Cases {
                fires: true,
                quiet: true
            }
        );
        assert_eq!(
            cases["B"],
            Cases {
                fires: false,
                quiet: true
            }
        );
    }

    #[test]
    fn anchors_follow_github_and_skip_code_fences() {
        let md = "# backstop\n## Operations: dashboard and alerts\n```sh\n# 1. not a heading\n```\n#### BackstopNotReady\n#hashtag\n";
        let anchors: Vec<String> = heading_anchors(md).into_iter().collect();
        assert_eq!(
            anchors,
            [
                "backstop",
                "backstopnotready",
                "operations-dashboard-and-alerts"
            ]
        );
    }

    #[test]
    fn families_come_with_their_types_and_summaries_have_no_buckets() {
        let text = "# TYPE backstop_messages_total counter\n\
            backstop_messages_total{outcome=\"handled\"} 3\n\
            \n\
            # TYPE backstop_handler_duration_seconds summary\n\
            backstop_handler_duration_seconds{quantile=\"0.5\"} 0.1\n\
            backstop_handler_duration_seconds_sum 0.3\n\
            backstop_handler_duration_seconds_count 3\n\
            backstop_untyped 1\n";
        let exposed = families(text);
        assert_eq!(exposed.len(), 3, "{exposed:?}");
        assert_eq!(exposed["backstop_handler_duration_seconds"], "summary");
        assert_eq!(exposed["backstop_untyped"], "untyped");
        let used = references(
            "histogram_quantile(0.5, rate(backstop_handler_duration_seconds_bucket[5m])) + backstop_messages_total + backstop_ready",
        );
        let missing: Vec<String> = missing(&used, &exposed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            missing,
            [
                "backstop_ready",
                "backstop_handler_duration_seconds_bucket (backstop_handler_duration_seconds is exposed as a summary)",
            ]
        );
    }

    #[test]
    fn grafana_variables_become_parsable_promql() {
        assert_eq!(
            without_grafana_variables(
                r#"rate(x{source=~"$source", group=~"${group}"}[$__rate_interval])"#
            ),
            r#"rate(x{source=~".*", group=~".*"}[5m])"#
        );
    }
}
