//! Group commit for a remote [`Store`]: the claims and completions of
//! concurrent messages that arrive while a round trip is in flight go out
//! together, as one [`Store::claim_many`] or [`Store::complete_many`].
//! Renewals need no batcher: the lease renewer already sends one
//! [`Store::renew_many`] per turn for every lease it holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::measured::{BatchOp, StoreOps};
use super::{Claim, ClaimOf, Fence, Held, Key, Layout, Store};
use crate::error::{Failure, StoreError};
use crate::metrics::MetricLabels;

/// How [`Batched`] gathers calls: the largest batch, and how many round
/// trips of one kind (claims, completions) may be in flight at
/// once.
///
/// A call that finds a free round trip goes out at once (a batch of one
/// when the worker is idle: no added latency); calls that arrive while
/// every round trip is busy wait, and the next one to come back takes up
/// to [`max_batch`](Self::max_batch) of them along. At most
/// `max_batch × (in_flight + 1)` calls of a kind wait at once; more wait
/// for room before they queue (no queue grows without bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most calls one round trip carries (at least 1). Default 256.
    pub max_batch: usize,
    /// The most round trips of one kind in flight (at least 1). Default 2.
    pub in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: 256,
            in_flight: 2,
        }
    }
}

impl BatchConfig {
    /// The bounds, each at least 1.
    fn bounded(self) -> Self {
        BatchConfig {
            max_batch: self.max_batch.max(1),
            in_flight: self.in_flight.max(1),
        }
    }
}

/// A batch the store did not answer item by item.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// The round trip ended without an answer for this item (it panicked).
    #[error("the store's batch ended without an answer for this item")]
    Unanswered,
    /// The store answered a batch with the wrong number of results.
    #[error("the store answered {got} results for a batch of {sent}")]
    Miscounted { got: usize, sent: usize },
}

fn store_error(error: BatchError) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// A [`Store`] that sends concurrent single-key calls to a remote store
/// in batches (group commit): `claim` and `complete` calls that
/// arrive while a round trip of their kind is in flight are gathered, up to
/// [`BatchConfig::max_batch`], and sent as one `claim_many`,
/// or `complete_many` when a round trip is free (at most
/// [`BatchConfig::in_flight`] per kind). Each caller gets its own item's
/// result; a batch that fails (the store is down, a timeout) fails each of
/// its items with the store's error.
///
/// Every call returns only after its batch's round trip returned: a
/// completion is written before its caller goes on (to ack the message).
/// The round trips run on spawned tasks that end with their last batch,
/// so a caller whose future is dropped while it waits breaks nothing for
/// the others (its item is left out if its batch has not gone yet), and
/// nothing outlives the wrapper's last batch. Fencing and leases are the
/// wrapped store's: the answers are those of its batch methods, the same
/// as its single-key calls (the store contract).
///
/// `renew` (the lease renewer batches renewals itself), `mark_dead_lettered`,
/// `release`, `release_with_letter`, `layout` and the batch methods themselves go
/// straight to the wrapped store, and so do `claim_now` / `complete_now`:
/// a store that answers at once (an in-process one) is not batched at all,
/// and no batch metrics are recorded for it.
///
/// The stack uses it by itself for stores whose [`Store::remote`] is true
/// (Redis, PostgreSQL; see
/// [`Config::batch`](super::Config#structfield.batch)); wrap a store
/// yourself to batch it elsewhere.
///
/// **Metrics.** Each round trip is timed as its batch operation
/// (`backstop_store_duration_seconds{op="claim_many"}`, …, each failed item
/// counted in `backstop_store_errors_total{op="claim_many"}`) and its size
/// recorded in `backstop_store_batch_size{op}`. In the stack, each
/// message's own call is still timed as `claim` or `complete`: the
/// time that message waited, its wait for a round trip included, and its
/// failure counted there too.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use backstop::idempotency::{Batched, BatchConfig, Key, MemoryStore};
/// use backstop::idempotency::Store;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = Batched::new(Arc::new(MemoryStore::default()), BatchConfig::default());
/// let (a, b) = (Key::new("a"), Key::new("b"));
/// let lease = Duration::from_secs(30);
/// // Concurrent claims go out together.
/// let (x, y) = tokio::join!(store.claim(&a, "w/1", lease, 0), store.claim(&b, "w/2", lease, 0));
/// let fence = x.unwrap().fence().unwrap();
/// assert!(y.unwrap().fence().is_some());
/// assert!(store.complete(&a, fence).await.unwrap());
/// # }
/// ```
pub struct Batched<S: ?Sized> {
    inner: Arc<S>,
    claims: Lane<ClaimItem, Claim>,
    completions: Lane<HeldItem, bool>,
}

impl<S: ?Sized> std::fmt::Debug for Batched<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batched")
            .field("config", &self.claims.shared.config)
            .finish_non_exhaustive()
    }
}

/// A claim waiting for its batch.
struct ClaimItem {
    key: Key,
    owner: String,
    replay: u32,
    lease: Duration,
}

/// A completion waiting for its batch.
struct HeldItem {
    key: Key,
    fence: Fence,
}

impl<S: Store + ?Sized> Batched<S> {
    /// Batches the calls to `inner` within `config`'s bounds; its metrics
    /// carry empty `source` and `group` labels.
    pub fn new(inner: Arc<S>, config: BatchConfig) -> Self {
        Self::labelled(inner, config, &MetricLabels::default())
    }

    /// As [`new`](Self::new), its metrics labelled `labels`.
    pub fn labelled(inner: Arc<S>, config: BatchConfig, labels: &MetricLabels) -> Self {
        Self::sharing(inner, config, Arc::new(StoreOps::new(labels)))
    }

    pub(crate) fn sharing(inner: Arc<S>, config: BatchConfig, ops: Arc<StoreOps>) -> Self {
        let config = config.bounded();
        let store = Arc::clone(&inner);
        let claims = Lane::new(config, Arc::clone(&ops), BatchOp::Claim, move |items| {
            let store = Arc::clone(&store);
            Box::pin(async move { claim_each_lease(&*store, &items).await })
        });
        let store = Arc::clone(&inner);
        let completions = Lane::new(config, ops, BatchOp::Complete, move |items| {
            let store = Arc::clone(&store);
            Box::pin(async move {
                let held: Vec<Held<'_>> = items
                    .iter()
                    .map(|i: &HeldItem| Held {
                        key: &i.key,
                        fence: i.fence,
                    })
                    .collect();
                store.complete_many(&held).await
            })
        });
        Batched {
            inner,
            claims,
            completions,
        }
    }

    /// The batched store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// One `claim_many` per run of claims with the same lease, in order (in
/// the stack every claim has the same lease: one run).
async fn claim_each_lease<S: Store + ?Sized>(
    store: &S,
    items: &[ClaimItem],
) -> Vec<Result<Claim, StoreError>> {
    let mut answers = Vec::with_capacity(items.len());
    for run in items.chunk_by(|a, b| a.lease == b.lease) {
        let claims: Vec<ClaimOf<'_>> = run
            .iter()
            .map(|i| ClaimOf {
                key: &i.key,
                owner: &i.owner,
                replay: i.replay,
            })
            .collect();
        let sent = store.claim_many(&claims, run[0].lease).await;
        answers.extend(complete_answers(sent, run.len()));
    }
    answers
}

/// `answers` if there are `sent` of them; otherwise one error per item.
fn complete_answers<O>(
    answers: Vec<Result<O, StoreError>>,
    sent: usize,
) -> Vec<Result<O, StoreError>> {
    if answers.len() == sent {
        return answers;
    }
    let got = answers.len();
    (0..sent)
        .map(|_| Err(store_error(BatchError::Miscounted { got, sent })))
        .collect()
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Batched<S> {
    async fn claim(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        self.claims
            .call(ClaimItem {
                key: key.clone(),
                owner: owner.to_owned(),
                replay,
                lease,
            })
            .await
    }

    /// The wrapped store's answer when it has one at once (nothing to batch).
    fn claim_now(
        &self,
        key: &Key,
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Option<Result<Claim, StoreError>> {
        self.inner.claim_now(key, owner, lease, replay)
    }

    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        self.inner.renew(key, fence, lease).await
    }

    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.completions
            .call(HeldItem {
                key: key.clone(),
                fence,
            })
            .await
    }

    fn complete_now(&self, key: &Key, fence: Fence) -> Option<Result<bool, StoreError>> {
        self.inner.complete_now(key, fence)
    }

    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.inner.mark_dead_lettered(key, fence).await
    }

    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        self.inner.release(key, fence, failed_runs).await
    }

    async fn release_with_letter(
        &self,
        key: &Key,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        self.inner.release_with_letter(key, fence, letter).await
    }

    fn storage_key(&self, key: &Key) -> Key {
        self.inner.storage_key(key)
    }

    /// False: this wrapper batches already (the stack does not wrap it again).
    fn remote(&self) -> bool {
        false
    }

    fn keeps_owner(&self) -> bool {
        self.inner.keeps_owner()
    }

    async fn layout(&self) -> Result<Layout, StoreError> {
        self.inner.layout().await
    }

    async fn claim_many(
        &self,
        claims: &[ClaimOf<'_>],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        self.inner.claim_many(claims, lease).await
    }

    async fn renew_many(
        &self,
        held: &[Held<'_>],
        lease: Duration,
    ) -> Vec<Result<bool, StoreError>> {
        self.inner.renew_many(held, lease).await
    }

    async fn complete_many(&self, held: &[Held<'_>]) -> Vec<Result<bool, StoreError>> {
        self.inner.complete_many(held).await
    }
}

/// Sends one batch: one answer per item, in order.
type SendBatch<I, O> =
    dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<Result<O, StoreError>>> + Send + Sync;

/// A call waiting in a lane: its item, where its answer goes, and its room
/// in the lane.
struct Waiting<I, O> {
    item: I,
    answer: oneshot::Sender<Result<O, StoreError>>,
    room: OwnedSemaphorePermit,
}

/// What a lane's calls and its round trips share.
struct Shared<I, O> {
    config: BatchConfig,
    state: Mutex<State<I, O>>,
    send: Box<SendBatch<I, O>>,
    ops: Arc<StoreOps>,
    op: BatchOp,
}

/// The calls waiting for a round trip, and how many round trips are out.
struct State<I, O> {
    waiting: std::collections::VecDeque<Waiting<I, O>>,
    in_flight: usize,
}

/// One kind of call (claims, completions) and its batches.
struct Lane<I, O> {
    shared: Arc<Shared<I, O>>,
    /// Bounds the calls waiting or in flight.
    room: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<I: Send + 'static, O: Send + 'static> Lane<I, O> {
    fn new(
        config: BatchConfig,
        ops: Arc<StoreOps>,
        op: BatchOp,
        send: impl Fn(Vec<I>) -> BoxFuture<'static, Vec<Result<O, StoreError>>> + Send + Sync + 'static,
    ) -> Self {
        let room = config.max_batch.saturating_mul(config.in_flight + 1);
        Lane {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    waiting: std::collections::VecDeque::new(),
                    in_flight: 0,
                }),
                send: Box::new(send),
                ops,
                op,
            }),
            room: Arc::new(Semaphore::new(room)),
        }
    }

    /// Queues `item`, starts a round trip if one is free, and waits for
    /// the item's answer.
    async fn call(&self, item: I) -> Result<O, StoreError> {
        // A free place is taken without a yield (`acquire_owned` spends
        // the task's cooperative budget: callers polled together would
        // then register over several polls and go out in many small
        // batches); only a full waiting room waits.
        let room = match Arc::clone(&self.room).try_acquire_owned() {
            Ok(room) => room,
            Err(_) => match Arc::clone(&self.room).acquire_owned().await {
                Ok(room) => room,
                Err(_) => return Err(store_error(BatchError::Unanswered)),
            },
        };
        let (answer, answered) = oneshot::channel();
        let batch = {
            let mut state = lock(&self.shared.state);
            state.waiting.push_back(Waiting { item, answer, room });
            self.shared.next_batch(&mut state, Turn::Start)
        };
        if let Some(batch) = batch {
            let drive = Arc::clone(&self.shared).drive(batch);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(drive)),
                // Outside a Tokio runtime the caller sends the batch itself.
                Err(_) => drive.await,
            }
        }
        answered
            .await
            .unwrap_or_else(|_| Err(store_error(BatchError::Unanswered)))
    }
}

/// Who asks for the next batch: a call that may start a round trip, or a
/// round trip that came back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Start,
    Returned,
}

impl<I: Send + 'static, O: Send + 'static> Shared<I, O> {
    /// The next batch to send, if any (callers that gave up are left
    /// out): for [`Turn::Start`] only while fewer than `in_flight` round
    /// trips are out (it then counts one more); a returned round trip that
    /// finds nothing waiting counts itself out.
    fn next_batch(&self, state: &mut State<I, O>, turn: Turn) -> Option<Vec<Waiting<I, O>>> {
        if turn == Turn::Start {
            if state.waiting.is_empty() || state.in_flight >= self.config.in_flight {
                return None;
            }
            state.in_flight += 1;
        }
        // Callers that gave up are left out as the batch is cut (not on
        // every call: that would scan the whole waiting room per message).
        let mut batch = Vec::with_capacity(state.waiting.len().min(self.config.max_batch));
        while batch.len() < self.config.max_batch {
            let Some(waiting) = state.waiting.pop_front() else {
                break;
            };
            if !waiting.answer.is_closed() {
                batch.push(waiting);
            }
        }
        if batch.is_empty() {
            state.in_flight -= 1;
            return None;
        }
        Some(batch)
    }

    /// Sends `batch`, answers each caller, then the batches that gathered
    /// meanwhile, until none is waiting.
    async fn drive(self: Arc<Self>, mut batch: Vec<Waiting<I, O>>) {
        // Counts this round trip out if the store's future panics.
        let mut out = Out(&self, true);
        loop {
            let (items, answers): (Vec<I>, Vec<_>) = batch
                .into_iter()
                .map(|w| (w.item, (w.answer, w.room)))
                .unzip();
            let sent = items.len();
            let start = Instant::now();
            let results = complete_answers((self.send)(items).await, sent);
            self.ops.round_trip(self.op, start, &results);
            for ((answer, _room), result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
            match self.next_batch(&mut lock(&self.state), Turn::Returned) {
                Some(next) => batch = next,
                None => {
                    out.1 = false;
                    return;
                }
            }
        }
    }
}

/// A round trip out; counted back in when dropped armed (the store's
/// future panicked, or the runtime dropped the task). If it was the last
/// one out, the calls waiting for it fail ([`BatchError::Unanswered`])
/// rather than wait for a round trip that no one will start.
struct Out<'a, I, O>(&'a Shared<I, O>, bool);

impl<I, O> Drop for Out<'_, I, O> {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        let abandoned = {
            let mut state = lock(&self.0.state);
            state.in_flight -= 1;
            if state.in_flight == 0 {
                std::mem::take(&mut state.waiting)
            } else {
                std::collections::VecDeque::new()
            }
        };
        drop(abandoned);
    }
}

#[cfg(test)]
#[path = "batched_tests.rs"]
mod tests;
