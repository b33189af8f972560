//! [`Batcher`]: gathers attempts into batches (cut when full or lingered,
//! one message per key), runs each on a task of its own, and keeps the
//! runs a retry must wait for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::call::{batch_failed, run};
use super::{BatchConfig, HandleBatch};
use crate::context::Context;
use crate::error::{ErrorKind, HandlerError};
use crate::handler::Handle;
use crate::payload::Payload;

/// One attempt waiting for its batch.
struct Waiting<T> {
    id: u64,
    key: Option<String>,
    item: (T, Context),
    answer: oneshot::Sender<Result<(), HandlerError>>,
}

/// The attempts waiting, oldest first.
struct Room<T> {
    next_id: u64,
    waiting: VecDeque<Waiting<T>>,
}

/// The batch runs of messages whose attempt may be retried, by message
/// id: running, or ended for an attempt that had given up (so its retry
/// learns how), kept for [`KEEP_ENDED`].
type Running = Arc<Mutex<HashMap<String, Run>>>;

/// One message's run in a batch.
struct Run {
    /// Whether it ended well; `None` while it runs.
    ended: watch::Receiver<Option<bool>>,
    /// When it ended, for an attempt that gave up before.
    at: Option<Instant>,
}

/// How long the end of a run whose attempt gave up is kept for its retry.
const KEEP_ENDED: Duration = Duration::from_secs(600);

/// A [`HandleBatch`] handler as a [`Handle`]: gathers attempts into
/// batches; see the [module docs](super).
pub struct Batcher<T, H> {
    handler: Arc<H>,
    config: BatchConfig,
    room: Arc<Mutex<Room<T>>>,
    running: Running,
}

impl<T, H> std::fmt::Debug for Batcher<T, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Payload, H: HandleBatch<T>> Batcher<T, H> {
    /// Batches `handler`'s messages as `config` says.
    pub fn new(handler: H, config: BatchConfig) -> Self {
        Batcher {
            handler: Arc::new(handler),
            config,
            room: Arc::new(Mutex::new(Room {
                next_id: 0,
                waiting: VecDeque::new(),
            })),
            running: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Room<T>> {
        lock(&self.room)
    }

    /// Takes the next batch: the oldest waiting attempts, up to `max`, at
    /// most one per key, leaving out those whose callers gave up.
    fn cut(&self, room: &mut Room<T>) -> Vec<Waiting<T>> {
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut kept = VecDeque::new();
        while let Some(w) = room.waiting.pop_front() {
            if w.answer.is_closed() {
                continue;
            }
            let fresh_key = w.key.as_ref().is_none_or(|k| keys.insert(k.clone()));
            if batch.len() < self.config.max && fresh_key {
                batch.push(w);
            } else {
                kept.push_back(w);
            }
        }
        room.waiting = kept;
        batch
    }

    /// Starts `batch` on a task of its own (so no member's cancellation
    /// stops it) that answers each attempt; each member is marked running
    /// until its answer is known, so a retry of it waits instead of
    /// running beside it.
    fn start(&self, batch: Vec<Waiting<T>>) {
        if batch.is_empty() {
            return;
        }
        let mut members = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        {
            let mut running = lock(&self.running);
            let now = Instant::now();
            running.retain(|_, r| r.at.is_none_or(|at| now.duration_since(at) < KEEP_ENDED));
            for w in batch {
                let (done, ended) = watch::channel(None);
                let id = w.item.1.message_id().to_owned();
                running.insert(id.clone(), Run { ended, at: None });
                members.push((id, w.answer, done));
                items.push(w.item);
            }
        }
        let (handler, running) = (Arc::clone(&self.handler), Arc::clone(&self.running));
        tokio::spawn(async move {
            let results = run(&*handler, items).await;
            let mut table = lock(&running);
            for ((id, answer, done), result) in members.into_iter().zip(results) {
                let ok = result.is_ok();
                // The attempt gave up (its timeout): its retry is told how
                // the run ended; else nothing is kept.
                let gave_up = answer.send(result).is_err();
                let _ = done.send(Some(ok));
                if let Some(run) = table.get_mut(&id)
                    && run.ended.same_channel(&done.subscribe())
                {
                    if gave_up {
                        run.at = Some(Instant::now());
                    } else {
                        table.remove(&id);
                    }
                }
            }
        });
    }

    /// Waits for a batch still running an earlier attempt of `ctx`'s
    /// message (one that timed out while in it), or that ran it after that
    /// attempt gave up; whether that run ended well.
    async fn earlier_run(&self, ctx: &Context) -> Option<bool> {
        let mut ended = lock(&self.running)
            .get(ctx.message_id())
            .map(|r| r.ended.clone())?;
        let ok = (*ended.wait_for(Option::is_some).await.ok()?)?;
        // Told: forgotten (a later retry runs the message itself).
        let mut table = lock(&self.running);
        if table
            .get(ctx.message_id())
            .is_some_and(|r| r.ended.same_channel(&ended))
        {
            table.remove(ctx.message_id());
        }
        Some(ok)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Payload, H: HandleBatch<T>> Handle<T> for Batcher<T, H> {
    type Error = HandlerError;

    async fn handle(&self, message: T, ctx: Context) -> Result<(), HandlerError> {
        // Retries run alone, after an earlier attempt of the message that
        // is still in a batch (it timed out there) has ended: if that run
        // succeeded, the message is handled.
        if ctx.attempt() > crate::attempt::FIRST {
            if self.earlier_run(&ctx).await == Some(true) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            self.start(vec![Waiting {
                id: 0,
                key: None,
                item: (message, ctx),
                answer: tx,
            }]);
            return answered(rx).await;
        }
        let key = message.key();
        let (tx, mut rx) = oneshot::channel();
        let (id, full) = {
            let mut room = self.lock();
            let id = room.next_id;
            room.next_id += 1;
            room.waiting.push_back(Waiting {
                id,
                key,
                item: (message, ctx),
                answer: tx,
            });
            let full = (room.waiting.len() >= self.config.max).then(|| self.cut(&mut room));
            (id, full)
        };
        if let Some(batch) = full {
            self.start(batch);
        }
        // Until answered: when this attempt has lingered and is still
        // waiting, it cuts the next batch itself (every older attempt cut
        // one by its own timer); left out of it (a key already in it), it
        // cuts again once that batch is done.
        let mut due = Instant::now() + self.config.linger;
        loop {
            tokio::select! {
                answer = &mut rx => return answer.unwrap_or_else(|_| Err(abandoned())),
                () = tokio::time::sleep_until(due) => {}
            }
            let batch = {
                let mut room = self.lock();
                if room.waiting.iter().any(|w| w.id == id) {
                    self.cut(&mut room)
                } else {
                    Vec::new()
                }
            };
            if batch.is_empty() {
                // Cut by another attempt: its answer is on the way.
                return answered(rx).await;
            }
            self.start(batch);
            // Left out of it (its key was in it), it cuts again when its
            // answer does not come first.
            due = Instant::now() + self.config.linger;
        }
    }
}

async fn answered(rx: oneshot::Receiver<Result<(), HandlerError>>) -> Result<(), HandlerError> {
    rx.await.unwrap_or_else(|_| Err(abandoned()))
}

/// The batch this attempt was in stopped before answering (the attempt
/// that ran it was cancelled).
fn abandoned() -> HandlerError {
    batch_failed(
        "the batch this message was in was abandoned before it answered".into(),
        ErrorKind::Exhausted,
    )
}
