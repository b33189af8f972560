//! The console's pages as maud templates. maud escapes every value it
//! inserts, so a letter's fields (a body holding `<script>`) show as text;
//! nothing here inserts raw HTML but the static layout.

use maud::{DOCTYPE, Markup, html};

use super::actions::Preview;
use super::body::View;
use super::clusters::DlqRef;
use super::index::{Page, Row};
use super::query::Query;
use super::state::Indexing;
use super::store::{Action, AuditEntry, Job};

/// What a path segment keeps as it is (RFC 3986's unreserved characters).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded.
pub fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// The page of a DLQ.
pub fn dlq_url(cluster: &str, name: &str) -> String {
    format!("/dlq/{}/{}", enc(cluster), enc(name))
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn time(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    backstop::wire::format_time(t)
}

/// How long ago `ms` was, in words.
pub fn age(ms: i64) -> String {
    let now = super::query::millis(std::time::SystemTime::now());
    let secs = u64::try_from((now - ms).max(0) / 1000).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// What every page shares: who is signed in, read-only, the CSRF token.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The user (`local` without authentication).
    pub user: String,
    /// No actions.
    pub read_only: bool,
    /// The token an action's form carries.
    pub csrf: String,
}

fn layout(frame: &Frame, title: &str, body: Markup) -> Markup {
    let headers = serde_json::json!({ "X-CSRF-Token": frame.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx without eval, script tags in swapped content or inline styles.
                meta name="htmx-config" content=r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false}"#;
                title { (title) " · backstop console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/htmx.min.js" {}
                script src="/assets/console.js" defer {}
            }
            body hx-headers=(headers) {
                header {
                    a.brand href="/" { "backstop console" }
                    nav { a href="/" { "Overview" } a href="/audit" { "Audit log" } }
                    span.who {
                        @if frame.read_only { span.badge { "read-only" } " " }
                        "signed in as " b { (frame.user) }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page (the message is escaped like any value).
pub fn error_page(text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "error · backstop console" }
                   link rel="stylesheet" href="/assets/console.css"; }
            body { main {
                h1 { "Something went wrong" }
                p.error { (text) }
                p { a href="/" { "Back to the overview" } }
            } }
        }
    }
}

/// One line of the overview.
#[derive(Debug, Clone)]
pub struct OverviewRow {
    /// The DLQ.
    pub at: DlqRef,
    /// What the broker says it holds.
    pub depth: Option<u64>,
    /// Live letters in the index, when indexed.
    pub live: Option<u64>,
    /// When the oldest live letter failed.
    pub oldest: Option<i64>,
    /// Letters that failed in the last hour, by kind.
    pub arrived: Vec<(String, u64)>,
    /// Letters redriven in the last hour, by kind.
    pub redriven: Vec<(String, u64)>,
    /// Where its index stands.
    pub indexing: Indexing,
}

fn kinds(list: &[(String, u64)]) -> Markup {
    let total: u64 = list.iter().map(|(_, n)| n).sum();
    html! {
        @if list.is_empty() { span.muted { "0" } } @else {
            b { (total) } " "
            @for (kind, n) in list { span.kind { (kind) " " (n) } " " }
        }
    }
}

/// The overview: every DLQ with its depth, oldest letter and last hour.
pub fn overview(
    frame: &Frame,
    rows: &[OverviewRow],
    errors: &[(String, String)],
    jobs: &[Job],
) -> Markup {
    layout(
        frame,
        "Overview",
        html! {
            h1 { "Dead-letter queues" }
            @for (cluster, e) in errors { p.error { "Could not list the DLQs of " b { (cluster) } ": " (e) } }
            @if rows.is_empty() && errors.is_empty() {
                p { "No DLQ found on the configured brokers (a DLQ is a queue named <queue>.dlq or a topic named <topic>.<group>.dlq)." }
            } @else {
                table #overview {
                    thead { tr {
                        th { "DLQ" } th { "broker" } th.num { "depth" } th { "oldest letter" }
                        th { "in, last hour (by kind)" } th { "redriven, last hour" } th { "index" }
                    } }
                    tbody { @for r in rows { tr {
                        td { a.dlq href=(dlq_url(&r.at.cluster, &r.at.name)) { (r.at.name) } }
                        td { (r.at.kind()) " " span.muted { (r.at.cluster) } }
                        td.num.depth { @match (r.at.is_kafka(), r.live, r.depth) {
                            (true, Some(live), _) => { (live) },
                            (_, _, Some(d)) => { (d) },
                            _ => { "?" },
                        } }
                        td { @if let Some(o) = r.oldest { (age(o)) " ago" } @else { span.muted { "—" } } }
                        td { (kinds(&r.arrived)) }
                        td { (kinds(&r.redriven)) }
                        td { (index_state(&r.indexing, r.live.is_some())) }
                    } } }
                }
            }
            @if !jobs.is_empty() {
                h2 { "Running actions" }
                ul { @for j in jobs { li { a href=(format!("/jobs/{}", j.id)) { "job " (j.id) } ": " (job_title(j)) } } }
            }
        },
    )
}

fn index_state(state: &Indexing, built: bool) -> Markup {
    html! { @match state {
        Indexing::Running => span.muted { "indexing…" },
        Indexing::Failed(e) => span.error { "failed: " (e) },
        Indexing::Idle if built => span.muted { "ready" },
        Indexing::Idle => span.muted { "not yet" },
    } }
}

fn job_title(j: &Job) -> String {
    let what = match j.spec.action {
        Action::Redrive => "redrive",
        Action::Purge => "purge",
    };
    format!("{what} of {}/{}", j.spec.cluster, j.spec.dlq)
}

/// What a DLQ page shows.
#[derive(Debug)]
pub struct DlqView<'a> {
    /// The DLQ.
    pub at: &'a DlqRef,
    /// The filters.
    pub query: &'a Query,
    /// Replayed and purged letters too.
    pub done: bool,
    /// The rows of this page.
    pub page: &'a Page,
    /// Rows the filters select.
    pub count: u64,
    /// What the broker says the DLQ holds.
    pub depth: Option<u64>,
    /// Live letters in the index.
    pub live: u64,
    /// When the index was last brought up to date.
    pub indexed_at: Option<String>,
    /// Where the index stands.
    pub indexing: Indexing,
    /// Letters the running index build has read.
    pub seen: u64,
    /// The kinds of the live letters, with counts.
    pub kinds: &'a [(String, u64)],
    /// How long the index took to answer, in ms.
    pub took_ms: u128,
}

fn filter_form(v: &DlqView<'_>) -> Markup {
    let q = v.query;
    html! {
        form.filters method="get" action=(dlq_url(&v.at.cluster, &v.at.name)) {
            label { "kind " select name="kind" {
                option value="" { "any" }
                @for (k, n) in v.kinds { option value=(k) selected[q.kind == *k] { (k) " (" (n) ")" } }
                @if !q.kind.is_empty() && !v.kinds.iter().any(|(k, _)| *k == q.kind) {
                    option value=(q.kind) selected { (q.kind) " (0)" }
                }
            } }
            label { "error contains " input type="text" name="error" value=(q.error); }
            label { "source " input type="text" name="source" value=(q.source); }
            label { "key or id " input type="text" name="key" value=(q.key); }
            label { "failed since " input type="text" name="since" value=(q.since) placeholder="2024-05-01T12:00:00+02:00"; }
            label { "until " input type="text" name="until" value=(q.until) placeholder="RFC 3339 with an offset"; }
            label { input type="checkbox" name="done" value="1" checked[v.done]; " replayed and purged too" }
            button type="submit" { "Filter" }
            " " a href=(dlq_url(&v.at.cluster, &v.at.name)) { "clear" }
        }
    }
}

fn hidden_query(q: &Query) -> Markup {
    html! {
        @for (name, value) in [("kind", &q.kind), ("error", &q.error), ("source", &q.source),
                               ("key", &q.key), ("since", &q.since), ("until", &q.until)] {
            input type="hidden" name=(name) value=(value);
        }
    }
}

/// A DLQ: filters, the letters as a table with paging, export and actions.
pub fn dlq_page(frame: &Frame, v: &DlqView<'_>) -> Markup {
    let base = dlq_url(&v.at.cluster, &v.at.name);
    let qs = v.query.to_query_string();
    let done = if v.done { "&done=1" } else { "" };
    let building = v.indexing == Indexing::Running;
    layout(
        frame,
        &v.at.name,
        html! {
            h1 { (v.at.name) " " span.muted { (v.at.kind()) " · " (v.at.cluster) } }
            p.summary {
                "depth " b #depth { (if v.at.is_kafka() { v.live } else { v.depth.unwrap_or(v.live) }) }
                " · " span #count { (v.count) } " selected"
                " · index " @if let Some(at) = &v.indexed_at { "of " (at) } @else { "not built yet" }
                " (" (v.took_ms) " ms)"
            }
            @if building {
                p.notice hx-get=(format!("{base}?{qs}{done}")) hx-trigger="every 2s" hx-select="main" hx-target="main" hx-swap="outerHTML" {
                    "Indexing… " (v.seen) " letters read so far; the table fills when it is done."
                }
            }
            @if let Indexing::Failed(e) = &v.indexing { p.error { "Indexing failed: " (e) } }
            @if !v.at.is_kafka() && !building && v.depth.is_some_and(|d| d != v.live) {
                p.notice { "The queue holds " (v.depth.unwrap_or(0)) " letters, the index " (v.live)
                           ": letters arrived or left since it was built. Walk the queue again to see them." }
            }
            @if frame.read_only && !v.at.is_kafka() {
                @if v.indexed_at.is_none() {
                    p.notice { "Read-only: a RabbitMQ queue is indexed by a walk that takes and puts back every letter, which a read-only console does not do. Start the console without --read-only to build its index." }
                }
            } @else {
                @if v.indexed_at.is_none() && !building {
                    p.notice { "This DLQ has no index yet. Building it reads every letter"
                        @if !v.at.is_kafka() { " (on RabbitMQ: takes and puts back each one)" } "." }
                }
                form method="post" action=(format!("{base}/reindex")) .inline {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button #reindex type="submit" disabled[building] {
                        @if v.indexed_at.is_none() { "Build the index" }
                        @else if v.at.is_kafka() { "Refresh index" } @else { "Walk the queue again" }
                    }
                }
            }
            " " a.button href=(format!("{base}/export?{qs}")) download { "Export filtered letters (JSON lines)" }
            (filter_form(v))
            form #letters method="post" action=(format!("{base}/preview")) {
                input type="hidden" name="csrf" value=(frame.csrf);
                (hidden_query(v.query))
                table #table {
                    thead { tr {
                        th { input type="checkbox" title="select the page" data-select-page; }
                        th { "id" } th { "source" } th { "key" } th { "kind" } th { "error" }
                        th.num { "attempts" } th.num { "replays" } th.num { "copies" } th { "first failure" } th { "last failure" }
                        @if v.done { th { "state" } }
                    } }
                    tbody { @for r in &v.page.rows { (row(&base, r, v.done)) } }
                }
                @if v.page.rows.is_empty() { p.muted { "No letter matches." } }
                nav.paging {
                    @if let Some(p) = v.page.prev { a href=(format!("{base}?{qs}{done}&before={p}")) rel="prev" { "← previous" } " " }
                    @if let Some(n) = v.page.next { a href=(format!("{base}?{qs}{done}&after={n}")) rel="next" { "next →" } }
                }
                @if !frame.read_only {
                    fieldset.actions {
                        legend { "Actions" }
                        label { input type="radio" name="scope" value="selected" checked; " the selected letters" }
                        label { input type="radio" name="scope" value="matching"; " every letter the filters select (" (v.count) ")" }
                        br;
                        label { "rate (letters/s, empty: no limit) " input type="number" name="rate" min="0.1" step="any"; }
                        label { "loop guard: refuse letters replayed " input type="number" name="max_replays" value="3" min="1"; " times" }
                        label { "destination (empty: the source) " input type="text" name="to"; }
                        br;
                        button #preview type="submit" { "Redrive: dry run" }
                        " · "
                        label { "type " code { (v.at.name) } " to purge " input type="text" name="confirm" autocomplete="off"; }
                        button.danger #purge type="submit" formaction=(format!("{base}/purge")) { "Purge" }
                    }
                }
            }
        },
    )
}

fn row(base: &str, r: &Row, done: bool) -> Markup {
    let link = format!("{base}/letters/{}", r.seq);
    html! { tr {
        td { input type="checkbox" name="id" value=(r.id); }
        td.id { a href=(link) { (r.id) } }
        td { (r.source.as_deref().unwrap_or("")) }
        td { (r.rkey.as_deref().unwrap_or("")) }
        td.kind { (r.kind.as_deref().unwrap_or("")) }
        td.error { (crate::dlq::table::shorten(r.error.as_deref().unwrap_or(""), 120)) }
        td.num { (r.attempts.map(|a| a.to_string()).unwrap_or_default()) }
        td.num { (r.replayed) }
        td.num { (r.copies) }
        td { (r.first_failure.as_deref().unwrap_or("")) }
        td { (r.last_failure.as_deref().unwrap_or("")) }
        @if done { td { (r.state.as_deref().unwrap_or("in the DLQ")) } }
    } }
}

/// What a letter page shows.
#[derive(Debug)]
pub struct LetterView<'a> {
    /// The DLQ.
    pub at: &'a DlqRef,
    /// The index row.
    pub row: &'a Row,
    /// The message.
    pub message: &'a backstop::Message,
    /// The body's view.
    pub view: View,
    /// The body as shown.
    pub body: &'a str,
    /// A note on the body (cut, not JSON).
    pub note: Option<&'a str>,
}

/// A letter: every header, the body, its attempt history and trace id.
pub fn letter_page(frame: &Frame, v: &LetterView<'_>) -> Markup {
    use backstop::wire;
    let base = dlq_url(&v.at.cluster, &v.at.name);
    let m = v.message;
    let h = |name: &str| m.header(name).unwrap_or("").to_owned();
    let trace = m.header(wire::TRACEPARENT).and_then(super::body::trace_id);
    layout(
        frame,
        &v.row.id,
        html! {
            p { a href=(base) { "← " (v.at.name) } }
            h1 { "Letter " code #letter-id { (v.row.id) } }
            @if let Some(s) = &v.row.state { p.notice { "This letter was " (s) "." } }
            h2 { "Failure" }
            table.kv {
                tr { th { "kind" } td { (h(wire::ERROR_KIND)) } }
                tr { th { "error" } td.error { (h(wire::ERROR)) } }
                tr { th { "source" } td { (h(wire::ORIGINAL_SOURCE)) } }
                tr { th { "trace id" } td #trace { (trace.unwrap_or("—")) } }
                tr { th { "copies in the DLQ" } td { (v.row.copies) } }
                @if let (Some(p), Some(o)) = (v.row.part, v.row.off) { tr { th { "DLQ partition / offset" } td { (p) " / " (o) } } }
            }
            h2 { "Body " span.muted { (m.payload.len()) " bytes" } }
            nav.views {
                @for view in [View::Json, View::Text, View::Hex] {
                    @if view == v.view { b { (view.name()) } } @else { a href=(format!("?view={}", view.name())) { (view.name()) } }
                    " "
                }
            }
            @if let Some(n) = v.note { p.muted { (n) } }
            pre #body { (v.body) }
        h2 { "Attempt history" }
            table.kv {
                tr { th { "first failure" } td { (h(wire::FIRST_FAILURE)) } }
                tr { th { "last failure" } td { (h(wire::LAST_FAILURE)) } }
                tr { th { "attempts in the last run" } td { (h(wire::ATTEMPT)) } }
                tr { th { "redriven before" } td { (m.replayed()) " time(s)" } }
            }
            h2 { "Headers" }
            table.kv #headers {
                @for (name, value) in m.headers.iter_values() {
                    tr { th { (name) } td { @if let Some(t) = value.as_text() { (t) } @else { code { (format!("{value:?}")) } } } }
                }
                @if let Some(k) = &m.key { tr { th { "(record key)" } td { (String::from_utf8_lossy(k)) } } }
            }
            },
    )
}

/// The fields a confirmed action carries over from its preview.
#[derive(Debug)]
pub struct ActionFields<'a> {
    /// Which letters.
    pub query: &'a Query,
    /// `selected` or `matching`.
    pub scope: &'a str,
    /// The rate, as typed.
    pub rate: &'a str,
    /// The loop guard.
    pub max_replays: u32,
    /// The destination, as typed.
    pub to: &'a str,
}

/// A dry run's result, with the form that runs it for real.
pub fn preview_page(frame: &Frame, at: &DlqRef, f: &ActionFields<'_>, p: &Preview) -> Markup {
    let base = dlq_url(&at.cluster, &at.name);
    let will = p.count.saturating_sub(p.refused);
    layout(
        frame,
        "Redrive: dry run",
        html! {
            p { a href=(format!("{base}?{}", f.query.to_query_string())) { "← " (at.name) } }
            h1 { "Redrive: dry run" }
            p #preview-summary { "Would redrive " b #would { (will) } " letter(s)"
                @if p.refused > 0 { "; the loop guard refuses " b { (p.refused) } " (replayed " (f.max_replays) " times or more)" }
                "." }
            @if f.scope == "matching" {
                p.notice #bound { "Only the " (p.count) " letter(s) the index holds when the redrive starts are acted on: letters that reach the DLQ later are left (walk the queue again or refresh to include them)." }
            }
            @if !f.query.ids.is_empty() && (f.query.ids.len() as u64) != p.count {
                p.notice { (f.query.ids.len()) " selected, " (p.count) " still in the DLQ." }
            }
            table.kv #destinations {
                tr { th { "source" } th { "goes to" } }
                @for (source, to) in &p.destinations { tr {
                    td { (source) }
                    td { @match to { Ok(t) => { code { (t) } }, Err(e) => { span.error { (e) } } } }
                } }
            }
            p { "Rate: " @if f.rate.is_empty() { "no limit" } @else { (f.rate) " letters/s" } }
            @if will > 0 {
                form method="post" action=(format!("{base}/redrive")) {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    (hidden_query(f.query))
                    @for id in &f.query.ids { input type="hidden" name="id" value=(id); }
                    input type="hidden" name="scope" value=(f.scope);
                    input type="hidden" name="rate" value=(f.rate);
                    input type="hidden" name="max_replays" value=(f.max_replays);
                    input type="hidden" name="to" value=(f.to);
                    button #redrive type="submit" { "Redrive " (will) " letter(s)" }
                }
            }
        },
    )
}

/// A job's progress (refreshed every second while it runs).
pub fn job_progress(job: &Job) -> Markup {
    let running = job.status == "running";
    let what = match job.spec.action {
        Action::Redrive => "redriven",
        Action::Purge => "purged",
    };
    html! {
        div #progress data-status=(job.status)
            hx-get=[running.then(|| format!("/jobs/{}/progress", job.id))]
            hx-trigger=[running.then_some("every 1s")] hx-swap="outerHTML" {
            p { "status: " b #status { (job.status) }
                @if job.runs > 1 { " (resumed " (job.runs - 1) " time(s) after a restart)" } }
            @if job.total > 0 { progress max=(job.total) value=(job.walked) {} }
            p { b #done { (job.done) } " " (what) " · " (job.walked) " of " (job.total) " letters walked"
                @if job.refused > 0 { " · " (job.refused) " refused by the loop guard" } }
            @if let Some(e) = &job.error { p.error { (e) } }
        }
    }
}

/// A job's page.
pub fn job_page(frame: &Frame, job: &Job) -> Markup {
    let s = &job.spec;
    layout(
        frame,
        &format!("job {}", job.id),
        html! {
            p { a href=(dlq_url(&s.cluster, &s.dlq)) { "← " (s.dlq) } }
            h1 { "Job " (job.id) ": " (job_title(job)) }
            table.kv {
                tr { th { "started by" } td { (job.user) " at " (time(job.started)) } }
                tr { th { "filter" } td { code { (s.query.to_query_string()) } } }
                @if s.action == Action::Redrive {
                    tr { th { "rate" } td { @if let Some(r) = s.rate { (r) " letters/s" } @else { "no limit" } } }
                    tr { th { "loop guard" } td { (s.max_replays) " replays" } }
                    tr { th { "destination" } td { (s.to.as_deref().unwrap_or("the source")) } }
                }
            }
            (job_progress(job))
            @if job.status == "running" && !frame.read_only {
                form method="post" action=(format!("/jobs/{}/cancel", job.id)) {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button #cancel type="submit" { "Cancel (stops after the letter in flight)" }
                }
            }
            @if job.status == "interrupted" {
                p.notice { "Interrupted: the console stopped while this job ran, and a read-only console does not resume it. The next console started without --read-only resumes it." }
            }
        },
    )
}

/// The audit log and the recent jobs.
pub fn audit_page(frame: &Frame, entries: &[AuditEntry], jobs: &[Job]) -> Markup {
    layout(
        frame,
        "Audit log",
        html! {
            h1 { "Audit log" }
            table #audit {
                thead { tr { th { "when" } th { "who" } th { "action" } th { "DLQ" } th { "filter" } th.num { "letters" } th { "detail" } } }
                tbody { @for e in entries { tr {
                    td { (time(e.at)) } td { (e.user) } td { (e.action) } td { (e.dlq) }
                    td { code { (e.filter) } } td.num { (e.count.map(|c| c.to_string()).unwrap_or_default()) } td { (e.detail) }
                } } }
            }
            h2 { "Jobs" }
            ul { @for j in jobs { li { a href=(format!("/jobs/{}", j.id)) { "job " (j.id) } ": " (job_title(j)) " · " (j.status) " · " (j.done) } } }
        },
    )
}
