//! The actions: a redrive's dry run and the redrive itself, purge (typed
//! confirmation), cancelling a job, and building or refreshing an index.
//! Each passed [`super::auth::guard`] (CSRF, read-only) and is written to
//! the audit log.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::actions;
use super::auth::User;
use super::error::ConsoleError;
use super::query::Query;
use super::routes::{blocking, frame};
use super::state::{Console, spawn_index};
use super::store::{Action, JobSpec};
use super::templates::{self, ActionFields};

/// An action's form, posted to `/dlq/{cluster}/{name}/…`.
#[derive(Debug)]
pub struct Form {
    cluster: String,
    name: String,
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = ConsoleError;

    async fn from_request(
        mut request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::RequestExt as _;
        let Path((cluster, name)) = request
            .extract_parts::<Path<(String, String)>>()
            .await
            .map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
        Ok(Form {
            cluster,
            name,
            pairs: url::form_urlencoded::parse(&body).into_owned().collect(),
        })
    }
}

impl Form {
    fn get(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// The letters: the selected ids (`scope=selected`), else the filters.
    fn query(&self) -> Result<Query, ConsoleError> {
        let mut q = Query::from_pairs(self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.get("scope") == "matching" {
            q.ids.clear();
        } else {
            if q.ids.is_empty() {
                return Err(ConsoleError::BadRequest(
                    "no letter selected: tick letters in the table, or choose every letter the filters select".into(),
                ));
            }
            q = Query {
                ids: q.ids,
                ..Query::default()
            };
        }
        q.filter()?;
        Ok(q)
    }

    fn rate(&self) -> Result<Option<f64>, ConsoleError> {
        use crate::dlq::{MAX_RATE, MIN_RATE, check_rate};
        match self.get("rate") {
            "" => Ok(None),
            r => r
                .parse::<f64>()
                .ok()
                .and_then(|v| check_rate(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    ConsoleError::BadRequest(format!(
                        "rate {r:?}: give a number of letters per second from {MIN_RATE} to {MAX_RATE}, or leave it empty for no limit"
                    ))
                }),
        }
    }

    fn matching(&self) -> bool {
        self.get("scope") == "matching"
    }

    fn max_replays(&self) -> Result<u32, ConsoleError> {
        match self.get("max_replays") {
            "" => Ok(3),
            m => m.parse().map_err(|_| {
                ConsoleError::BadRequest(format!("loop guard {m:?}: give a whole number"))
            }),
        }
    }

    fn to(&self) -> Option<String> {
        Some(self.get("to").to_owned()).filter(|t| !t.is_empty())
    }
}

/// `POST …/preview`: the dry run.
pub async fn preview(
    State(console): State<Arc<Console>>,
    Extension(user): Extension<User>,
    form: Form,
) -> Result<Response, ConsoleError> {
    let state = console.dlq(&form.cluster, &form.name).await?;
    let query = form.query()?;
    let (rate, max_replays) = (form.rate()?, form.max_replays()?);
    let preview = actions::preview(&state, &query, form.to(), max_replays).await?;
    console.store.audit(
        &user.0,
        "redrive dry run",
        &state.at.key(),
        &query,
        Some(preview.count.saturating_sub(preview.refused)),
        &format!("{} refused by the loop guard", preview.refused),
    )?;
    let rate_text = rate.map(|r| r.to_string()).unwrap_or_default();
    let fields = ActionFields {
        query: &query,
        scope: if form.get("scope") == "matching" {
            "matching"
        } else {
            "selected"
        },
        rate: &rate_text,
        max_replays,
        to: form.get("to"),
    };
    Ok(
        templates::preview_page(&frame(&console, &user), &state.at, &fields, &preview)
            .into_response(),
    )
}

/// Starts `spec`; a job over every matching letter is bound to the letters
/// the index holds now ([`actions::bound`]), and the audit counts those.
async fn start(
    console: &Arc<Console>,
    user: &User,
    mut spec: JobSpec,
    matching: bool,
    detail: String,
) -> Result<Response, ConsoleError> {
    let state = console.dlq(&spec.cluster, &spec.dlq).await?;
    let count = if matching {
        let (s, q) = (Arc::clone(&state), spec.query.clone());
        let ids = blocking(move || actions::bound(&s, &q)).await?;
        let n = ids.len() as u64;
        spec.only = Some(ids);
        n
    } else {
        let index = state.index();
        let q = spec.query.clone();
        blocking(move || index.count(&q, false)).await?
    };
    let detail = if matching {
        format!("{detail}; bound to the {count} letter(s) in the index")
    } else {
        detail
    };
    let id = actions::start(console, spec.clone(), &user.0)?;
    let verb = match spec.action {
        Action::Redrive => "redrive",
        Action::Purge => "purge",
    };
    console.store.audit(
        &user.0,
        verb,
        &state.at.key(),
        &spec.query,
        Some(count),
        &format!("job {id}{detail}"),
    )?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `POST …/redrive`: starts a redrive job.
pub async fn redrive(
    State(console): State<Arc<Console>>,
    Extension(user): Extension<User>,
    form: Form,
) -> Result<Response, ConsoleError> {
    let spec = JobSpec {
        action: Action::Redrive,
        query: form.query()?,
        to: form.to(),
        rate: form.rate()?,
        max_replays: form.max_replays()?,
        only: None,
        cluster: form.cluster.clone(),
        dlq: form.name.clone(),
    };
    let detail = format!(
        ", to {}, rate {}, loop guard {}",
        spec.to.as_deref().unwrap_or("the source"),
        spec.rate.map_or("unlimited".into(), |r| format!("{r}/s")),
        spec.max_replays
    );
    start(&console, &user, spec, form.matching(), detail).await
}

/// `POST …/purge`: starts a purge job once the DLQ's name was typed.
pub async fn purge(
    State(console): State<Arc<Console>>,
    Extension(user): Extension<User>,
    form: Form,
) -> Result<Response, ConsoleError> {
    if form.get("confirm") != form.name {
        return Err(ConsoleError::BadRequest(format!(
            "purging deletes letters for good: type the DLQ's name {:?} in the confirmation field (export them first if unsure)",
            form.name
        )));
    }
    let spec = JobSpec {
        action: Action::Purge,
        query: form.query()?,
        to: None,
        rate: None,
        max_replays: 0,
        only: None,
        cluster: form.cluster.clone(),
        dlq: form.name.clone(),
    };
    start(&console, &user, spec, form.matching(), String::new()).await
}

/// `POST /jobs/{id}/cancel`: asks a running job to stop between letters.
pub async fn cancel(
    State(console): State<Arc<Console>>,
    Path(id): Path<i64>,
    Extension(user): Extension<User>,
) -> Result<Response, ConsoleError> {
    let job = super::routes::find_job(&console, id)?;
    actions::cancel(&console, id)?;
    console.store.audit(
        &user.0,
        "cancel",
        &format!("{}/{}", job.spec.cluster, job.spec.dlq),
        &job.spec.query,
        Some(job.done),
        &format!("job {id}: stop requested"),
    )?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `POST …/reindex`: builds or brings the index up to date (RabbitMQ: walks
/// the queue, which takes and puts back every letter: refused read-only;
/// Kafka only reads).
pub async fn reindex(
    State(console): State<Arc<Console>>,
    Path((cluster, name)): Path<(String, String)>,
    Extension(user): Extension<User>,
) -> Result<Response, ConsoleError> {
    let state = console.dlq(&cluster, &name).await?;
    if console.read_only && !state.at.is_kafka() {
        return Err(ConsoleError::ReadOnlyWalk);
    }
    spawn_index(Arc::clone(&state), true);
    console.store.audit(
        &user.0,
        "reindex",
        &state.at.key(),
        &Query::default(),
        None,
        "",
    )?;
    Ok(Redirect::to(&templates::dlq_url(&cluster, &name)).into_response())
}
