//! The pages: overview, a DLQ, a letter, its export, a job, the audit log.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::Markup;

use super::auth::User;
use super::body::{View, render};
use super::clusters::{Broker, DlqRef};
use super::error::ConsoleError;
use super::index::Cursor;
use super::query::{Query, millis};
use super::state::Console;
use super::templates::{self, DlqView, Frame, LetterView, OverviewRow};

/// Letters a DLQ page shows.
pub const PAGE_SIZE: usize = 50;

/// The frame of a page for `user`.
pub fn frame(console: &Console, user: &User) -> Frame {
    Frame {
        user: user.0.clone(),
        read_only: console.read_only,
        csrf: console.csrf.clone(),
    }
}

/// The `name=value` pairs of a query string.
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs index work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConsoleError::State {
            path: "index".into(),
            reason: e.to_string(),
        })?
}

const HOUR_MS: i64 = 3600 * 1000;

/// `GET /`: every DLQ.
pub async fn overview(
    State(console): State<Arc<Console>>,
    Extension(user): Extension<User>,
) -> Result<Markup, ConsoleError> {
    let (found, errors) = console.discover().await;
    let since = millis(std::time::SystemTime::now()) - HOUR_MS;
    let mut rows = Vec::new();
    for (f, state) in found {
        let index = state.index();
        let built = index.meta("indexed_at")?.is_some();
        let stats = if built {
            Some(blocking(move || index.stats(since)).await?)
        } else {
            None
        };
        rows.push(OverviewRow {
            depth: f.depth,
            live: stats.as_ref().map(|s| s.live),
            oldest: stats.as_ref().and_then(|s| s.oldest),
            arrived: stats.map(|s| s.arrived).unwrap_or_default(),
            redriven: console.store.redriven_since(&f.at.key(), since)?,
            indexing: state.indexing(),
            at: f.at,
        });
    }
    let jobs = console.store.jobs(true, 20)?;
    Ok(templates::overview(
        &frame(&console, &user),
        &rows,
        &errors,
        &jobs,
    ))
}

/// What the broker says a RabbitMQ DLQ holds (Kafka: none; its index counts).
async fn depth(at: &DlqRef) -> Option<u64> {
    let Broker::Rabbit(r) = &at.broker else {
        return None;
    };
    let path = format!(
        "/api/queues/{}/{}?columns=messages",
        templates::enc(&r.vhost()),
        templates::enc(&at.name)
    );
    crate::rabbit_api::get_json(&r.api, &path).await.ok()?["messages"].as_u64()
}

/// `GET /dlq/{cluster}/{name}`: the letters, filtered, a page at a time
/// (`after`/`before` a row), live ones unless `done=1`.
pub async fn dlq(
    State(console): State<Arc<Console>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    Extension(user): Extension<User>,
) -> Result<Markup, ConsoleError> {
    // A GET never walks the broker: an unindexed DLQ shows a button that
    // builds its index (a POST with the CSRF token).
    let state = console.dlq(&cluster, &name).await?;
    let index = state.index();
    let pairs = pairs(raw.as_deref());
    let query = Query::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let done = field(&pairs, "done") == Some("1");
    let number = |name| field(&pairs, name).and_then(|v| v.parse::<i64>().ok());
    let cursor = match (number("after"), number("before")) {
        (Some(a), _) => Some(Cursor::After(a)),
        (None, Some(b)) => Some(Cursor::Before(b)),
        _ => None,
    };
    let started = Instant::now();
    let q = query.clone();
    let (page, count, live, kinds, indexed_at) = blocking(move || {
        Ok((
            index.page(&q, done, cursor, PAGE_SIZE)?,
            index.count(&q, done)?,
            index.count(&Query::default(), false)?,
            index.values("kind")?,
            index.meta("indexed_at")?,
        ))
    })
    .await?;
    let took_ms = started.elapsed().as_millis();
    let depth = depth(&state.at).await;
    let view = DlqView {
        at: &state.at,
        query: &query,
        done,
        page: &page,
        count,
        depth,
        live,
        indexed_at,
        indexing: state.indexing(),
        seen: state.seen(),
        kinds: &kinds,
        took_ms,
    };
    Ok(templates::dlq_page(&frame(&console, &user), &view))
}

/// `GET /dlq/{cluster}/{name}/export`: the filtered live letters as JSON
/// lines (the CLI's export format), streamed from the index.
pub async fn export(
    State(console): State<Arc<Console>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    Extension(user): Extension<User>,
) -> Result<Response, ConsoleError> {
    let state = console.dlq(&cluster, &name).await?;
    let pairs = pairs(raw.as_deref());
    let query = Query::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let index = state.index();
    let q = query.clone();
    let count = blocking(move || index.count(&q, false)).await?;
    console.store.audit(
        &user.0,
        "export",
        &state.at.key(),
        &query,
        Some(count),
        "JSON lines",
    )?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    let index = state.index();
    tokio::task::spawn_blocking(move || {
        let result = index.export(&query, |mut line| {
            line.push('\n');
            tx.blocking_send(Ok(line)).is_ok()
        });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let file = format!(
        "attachment; filename=\"{}.jsonl\"",
        name.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_"
        )
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_DISPOSITION, file),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /dlq/{cluster}/{name}/letters/{seq}`: one letter (`view=json|text|hex`).
pub async fn letter(
    State(console): State<Arc<Console>>,
    Path((cluster, name, seq)): Path<(String, String, i64)>,
    RawQuery(raw): RawQuery,
    Extension(user): Extension<User>,
) -> Result<Markup, ConsoleError> {
    let state = console.dlq(&cluster, &name).await?;
    let index = state.index();
    let (row, json) = blocking(move || index.letter(seq))
        .await?
        .ok_or(ConsoleError::UnknownLetter(seq))?;
    let message = crate::dlq::export::parse_line(&json).map_err(|e| ConsoleError::State {
        path: state.index().path().display().to_string(),
        reason: format!("letter {seq}: {e}"),
    })?;
    let pairs = pairs(raw.as_deref());
    let view = View::pick(field(&pairs, "view"), &message.payload);
    let (body, note) = render(&message.payload, view);
    let v = LetterView {
        at: &state.at,
        row: &row,
        message: &message,
        view,
        body: &body,
        note: note.as_deref(),
    };
    Ok(templates::letter_page(&frame(&console, &user), &v))
}

/// Job `id`, or an error that says there is none.
pub fn find_job(console: &Console, id: i64) -> Result<super::store::Job, ConsoleError> {
    console
        .store
        .job(id)?
        .ok_or_else(|| ConsoleError::BadRequest(format!("no job {id}")))
}

/// `GET /jobs/{id}`.
pub async fn job(
    State(console): State<Arc<Console>>,
    Path(id): Path<i64>,
    Extension(user): Extension<User>,
) -> Result<Markup, ConsoleError> {
    let job = find_job(&console, id)?;
    Ok(templates::job_page(&frame(&console, &user), &job))
}

/// `GET /jobs/{id}/progress`: the progress fragment htmx polls.
pub async fn job_progress(
    State(console): State<Arc<Console>>,
    Path(id): Path<i64>,
) -> Result<Markup, ConsoleError> {
    let job = find_job(&console, id)?;
    Ok(templates::job_progress(&job))
}

/// `GET /audit`.
pub async fn audit(
    State(console): State<Arc<Console>>,
    Extension(user): Extension<User>,
) -> Result<Markup, ConsoleError> {
    let entries = console.store.audit_log(500)?;
    let jobs = console.store.jobs(false, 50)?;
    Ok(templates::audit_page(
        &frame(&console, &user),
        &entries,
        &jobs,
    ))
}
