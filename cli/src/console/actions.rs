//! Redrive and purge from the console, on the DLQ library the CLI uses
//! ([`Dlq::replay`](crate::dlq::Dlq::replay), [`Dlq::purge`](crate::dlq::Dlq::purge)): a dry-run preview from the index, and
//! jobs that run in the background with live progress.
//!
//! **Resumable.** A job is recorded (filter, options, who) in the
//! [`Store`](super::store::Store) before it starts and marked done only
//! when the library returns. At start-up the console runs again every job
//! still marked running (it stopped with the console): the library's own
//! resume state makes the rerun finish the job without redriving a letter
//! twice: on RabbitMQ a letter leaves the DLQ only once its copy is
//! confirmed (a crash between the two leaves the letter, and its rerun
//! copy carries the same message id and replay count, which the
//! idempotency layer admits once); on Kafka the state topic records every
//! redriven letter, and the rerun skips them. A read-only console resumes
//! nothing: it marks such jobs `interrupted` (the next console that may act
//! resumes them).
//!
//! **Bounded.** A job over "every letter matching the filter" acts on the
//! letters the index holds when it starts ([`JobSpec::only`]), never on
//! letters that reached the DLQ later.
//!
//! **Cancellable.** [`cancel`] sets the job's stop flag; the library checks
//! it between letters (on RabbitMQ after the letters in flight are
//! confirmed and acked), and the job ends `cancelled`. A job whose run
//! fails or panics ends `failed`, its progress ticker stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::error::ConsoleError;
use super::query::Query;
use super::state::{Console, DlqState};
use super::store::{Action, JobSpec};
use crate::dlq::{Letter, ReplayOptions, Step, Watch, export};

/// What a redrive would do: how many letters, how many the loop guard
/// refuses, and where they go (one line per source).
#[derive(Debug, Default)]
pub struct Preview {
    /// Letters selected (live, in the index).
    pub count: u64,
    /// Of them, refused by the loop guard.
    pub refused: u64,
    /// Per original source: where its letters go, or why they cannot.
    pub destinations: Vec<(String, Result<String, String>)>,
}

/// A dry run from the index: nothing is changed or walked.
pub async fn preview(
    dlq: &DlqState,
    query: &Query,
    to: Option<String>,
    max_replays: u32,
) -> Result<Preview, ConsoleError> {
    let index = dlq.index();
    let mut preview = Preview {
        count: index.count(query, false)?,
        refused: index.refused(query, max_replays)?,
        destinations: Vec::new(),
    };
    let samples = index.sample(query, 10)?;
    if samples.is_empty() {
        return Ok(preview);
    }
    let opened = dlq.at.open().await?;
    let options = ReplayOptions {
        to,
        dry_run: true,
        rate: None,
        max_replays,
        watch: Watch::default(),
    };
    for (row, json) in samples {
        let source = row.source.unwrap_or_else(|| "(no source header)".into());
        let to = match export::parse_line(&json) {
            Ok(m) => opened
                .destination(&Letter::new(m), &options)
                .await
                .map_err(|e| crate::redact::redact_all(&e.to_string())),
            Err(e) => Err(e),
        };
        preview.destinations.push((source, to));
    }
    Ok(preview)
}

/// The most letters a "matching" job carries by id (see the module docs).
pub const MAX_BOUND: usize = 200_000;

/// The message ids of the letters the index holds for `query` (a
/// "matching" job's bound); refused when empty or above [`MAX_BOUND`].
pub fn bound(dlq: &DlqState, query: &Query) -> Result<Vec<String>, ConsoleError> {
    let ids = dlq.index().ids(query, MAX_BOUND)?;
    if ids.is_empty() {
        return Err(ConsoleError::BadRequest(
            "no letter in the index matches the filter (walk the queue again if letters arrived since)".into(),
        ));
    }
    if ids.len() > MAX_BOUND {
        return Err(ConsoleError::BadRequest(format!(
            "the filter selects more than {MAX_BOUND} letters: narrow it (by kind, error, source or time) and act in parts, or use the CLI"
        )));
    }
    Ok(ids)
}

/// Records and starts a job; returns its number.
pub fn start(console: &Arc<Console>, spec: JobSpec, user: &str) -> Result<i64, ConsoleError> {
    let id = console.store.create_job(&spec, user)?;
    spawn(console, id, spec, user.to_owned(), 0);
    Ok(id)
}

/// Runs job `id` in the background, its stop flag registered first (so a
/// cancel right after the start finds it).
fn spawn(console: &Arc<Console>, id: i64, spec: JobSpec, user: String, done_before: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    if let Ok(mut stops) = console.stops.lock() {
        stops.insert(id, Arc::clone(&stop));
    }
    tokio::spawn(run(Arc::clone(console), id, spec, user, done_before, stop));
}

/// Asks running job `id` to stop (see the module docs).
pub fn cancel(console: &Console, id: i64) -> Result<(), ConsoleError> {
    let stops = console.stops.lock().map_err(|_| ConsoleError::State {
        path: format!("job {id}"),
        reason: "a job panicked".into(),
    })?;
    let stop = stops.get(&id).ok_or(ConsoleError::NotRunning(id))?;
    stop.store(true, Ordering::SeqCst);
    Ok(())
}

/// Runs again every job the console was running when it stopped; a
/// read-only console marks them `interrupted` instead and returns 0.
pub fn resume_all(console: &Arc<Console>) -> Result<usize, ConsoleError> {
    let jobs = console.store.jobs(true, 1000)?;
    if console.read_only {
        for job in &jobs {
            console.store.interrupted(job.id)?;
        }
        return Ok(0);
    }
    for job in &jobs {
        console.store.restarted(job.id)?;
        console.store.audit(
            &job.user,
            &format!("{} resumed", verb(job.spec.action)),
            &format!("{}/{}", job.spec.cluster, job.spec.dlq),
            &job.spec.query,
            Some(job.done),
            &format!("job {} resumed after a restart", job.id),
        )?;
        spawn(
            console,
            job.id,
            job.spec.clone(),
            job.user.clone(),
            job.done,
        );
    }
    Ok(jobs.len())
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Redrive => "redrive",
        Action::Purge => "purge",
    }
}

#[derive(Debug, Default)]
struct Counters {
    walked: AtomicU64,
    total: AtomicU64,
    done: AtomicU64,
    refused: AtomicU64,
}

/// Aborts a task when dropped (also when the job's run panics).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    console: Arc<Console>,
    id: i64,
    spec: JobSpec,
    user: String,
    done_before: u64,
    stop: Arc<AtomicBool>,
) {
    let counters = Arc::new(Counters::default());
    counters.done.store(done_before, Ordering::Relaxed);
    // On a task of its own: a panic in it fails the job instead of
    // leaving it "running" (and resumed, to panic again, at every start).
    let task = {
        let (console, spec, counters, stop) = (
            Arc::clone(&console),
            spec.clone(),
            Arc::clone(&counters),
            Arc::clone(&stop),
        );
        tokio::spawn(async move { execute(&console, id, &spec, &counters, stop).await })
    };
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(ConsoleError::State {
            path: format!("job {id}"),
            reason: if e.is_panic() {
                "the job's run panicked (a bug: please report it with the console's log)".into()
            } else {
                format!("the job's run ended: {e}")
            },
        }),
    };
    if let Ok(mut stops) = console.stops.lock() {
        stops.remove(&id);
    }
    let cancelled = stop.load(Ordering::SeqCst);
    let done = counters.done.load(Ordering::Relaxed);
    let error = result
        .err()
        .map(|e| crate::redact::redact_all(&e.to_string()));
    let _ = save(&console, id, &counters);
    let _ = console.store.finish(id, error.as_deref(), cancelled);
    // RabbitMQ: a letter is marked in the index when its copy goes out,
    // before the broker confirms it; after a failure, walk the queue again
    // so the index shows what stayed.
    if error.is_some()
        && let Ok(state) = console.dlq(&spec.cluster, &spec.dlq).await
        && !state.at.is_kafka()
    {
        super::state::spawn_index(state, true);
    }
    let (what, detail) = match &error {
        None if cancelled => ("cancelled", format!("job {id}, stopped on request")),
        None => ("finished", format!("job {id}")),
        Some(e) => ("failed", format!("job {id}: {e}")),
    };
    let _ = console.store.audit(
        &user,
        &format!("{} {what}", verb(spec.action)),
        &format!("{}/{}", spec.cluster, spec.dlq),
        &spec.query,
        Some(done),
        &detail,
    );
}

fn save(console: &Console, id: i64, c: &Counters) -> Result<(), ConsoleError> {
    console.store.progress(
        id,
        c.walked.load(Ordering::Relaxed),
        c.total.load(Ordering::Relaxed),
        c.done.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
    )
}

async fn execute(
    console: &Arc<Console>,
    id: i64,
    spec: &JobSpec,
    counters: &Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<(), ConsoleError> {
    let state = console.dlq(&spec.cluster, &spec.dlq).await?;
    let mut query = spec.query.clone();
    if let Some(only) = &spec.only {
        if only.is_empty() {
            return Ok(());
        }
        query.ids.clone_from(only);
    }
    let filter = query.filter()?;
    let _walk = state.lock.lock().await;
    let dlq = state.at.open().await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let c = Arc::clone(counters);
    let watch = Watch::new(move |step| match step {
        Step::Started { letters } => c.total.store(letters, Ordering::Relaxed),
        Step::Walked => {
            c.walked.fetch_add(1, Ordering::Relaxed);
        }
        Step::Replayed { id, .. } | Step::Purged { id } => {
            c.done.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(id.to_owned());
        }
        Step::Refused { .. } => {
            c.refused.fetch_add(1, Ordering::Relaxed);
        }
    })
    .with_stop(stop);
    let marker = tokio::spawn(mark(
        Arc::clone(console),
        Arc::clone(&state),
        spec.action,
        rx,
    ));
    let ticker = {
        let (console, counters) = (Arc::clone(console), Arc::clone(counters));
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let _ = save(&console, id, &counters);
            }
        }))
    };
    let outcome = match spec.action {
        Action::Redrive => {
            let options = ReplayOptions {
                to: spec.to.clone(),
                dry_run: false,
                rate: spec.rate,
                max_replays: spec.max_replays,
                watch,
            };
            dlq.replay(&filter, &options).await.map(drop)
        }
        Action::Purge => {
            let purged = dlq.purge(&filter, &watch).await.map(drop);
            drop(watch);
            purged
        }
    };
    // The watch (and its sender) is gone: the marker drains and ends.
    let marked = marker.await;
    drop(ticker);
    outcome?;
    marked.unwrap_or(Ok(()))
}

/// Marks each redriven or purged letter in the index as it goes (a batch a
/// quarter second), and counts redriven ones by kind for the overview.
async fn mark(
    console: Arc<Console>,
    state: Arc<DlqState>,
    action: Action,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Result<(), ConsoleError> {
    let mark = match action {
        Action::Redrive => "replayed",
        Action::Purge => "purged",
    };
    let index = state.index();
    let key = state.at.key();
    let mut open = true;
    while open {
        let mut ids = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_millis(250);
        while let Ok(next) = tokio::time::timeout_at(until, rx.recv()).await {
            match next {
                Some(id) => ids.push(id),
                None => {
                    open = false;
                    break;
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        let mut kinds = Vec::with_capacity(ids.len());
        for id in &ids {
            kinds.push(index.kind_of(id)?.unwrap_or_else(|| "?".into()));
        }
        let mut writer = index.writer()?;
        for id in &ids {
            writer.mark_id(id, mark)?;
        }
        writer.commit()?;
        if action == Action::Redrive {
            console.store.redriven(&key, &kinds)?;
        }
    }
    Ok(())
}
