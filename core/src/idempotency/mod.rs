//! Idempotency: deduplication with fenced leases over a [`Store`].
//!
//! **Keyspaces.** Every key goes into its consumer's [`Keyspace`]: the
//! message's source queue or topic, its Kafka group, and the optional
//! [`Config::service`](Config#structfield.service) added, so consumers that
//! share a store never skip each other's messages. The store's [`Layout`]
//! (checked on start against the user's [`KeyLayout`]) can keep the first
//! release's global keys instead, or, during a migration window, read and
//! hold each message's global key as well (see [`layout`]).
//!
//! Per message with a key ([`KeySource`]): claim the key's lease; a
//! completed or dead-lettered key is a [`Outcome::Duplicate`] (acked); a key
//! another live owner holds is [`Error::Busy`] (requeued, never spun). While
//! the inner stack runs, the lease is renewed every lease/3 (one background
//! task per layer renews all the leases it holds, in one batch). Then:
//! `Handled` completes the key, `DeadLettered` marks it dead-lettered,
//! `Deferred` releases it and records the failed runs, a DLQ write that was
//! not confirmed releases it keeping the letter ([`Store::release_with_letter`]),
//! another error releases it. A claim that finds a letter pending
//! ([`Claim::LetterPending`]) hands it to the dead-letter layer as a
//! [`PendingLetter`], which writes only
//! that letter, with the original failure, without running the handler.
//! Every one of these names the lease's [`Fence`], so a run whose lease was
//! lost can settle nothing. If the future is dropped, a guard releases the
//! key without counting an attempt. A store that is down requeues the message
//! ([`Error::Store`]).
//!
//! **Batches.** For a remote store ([`Store::remote`]: Redis, PostgreSQL)
//! the concurrent messages' claims and completions go out in
//! batches ([`Batched`], bounded by [`Config::batch`]): one round trip
//! carries every call that arrived while the previous one was in flight. A
//! message's completion is written before it is acked: a completion that
//! fails (the store is down, a timeout; a whole batch fails each of its
//! items) turns the message's `Handled` into [`Error::Store`], so it is
//! requeued (nacked and redelivered) like a claim that fails. The
//! completion is retried in the background until the lease runs out: once
//! it is written the redelivery is a duplicate; if the lease runs out
//! first, the redelivery takes the key over as after a crash and runs again.
//!
//! **Metrics.** Every store call is timed and its failures counted, by
//! operation ([`Measured`]): `backstop_store_duration_seconds{op}` and
//! `backstop_store_errors_total{op}` (a call the store answers at once,
//! without I/O, as the [`MemoryStore`] does, is recorded as taking no time). With batches, `claim` and `complete`
//! time each message's own call (its wait for a round trip
//! included), the batch operations (`claim_many`, …) each round trip, and
//! `backstop_store_batch_size{op}` counts the calls each carried.
//!
//! **Lost leases.** The inner layers see a child of the request's
//! cancellation token that also fires when the lease is lost: the store
//! refused a renewal (the lease was taken over), or no renewal got through
//! for a whole lease. The handler's [`Context::cancellation`](crate::context::Context::cancellation)
//! fires, retries stop, and the message is left for redelivery; a completion
//! that still arrives is refused by the fence. The handler's effects between
//! the loss and its noticing the token are outside the fence: fence them in
//! the same database (the PostgreSQL inbox checks the token inside its
//! transaction), or keep the lease well above the store's worst outage.
//!
//! **Crashes.** A claim that takes over an expired lease (its owner never
//! released it: the process died, or hung past its lease) counts one failed
//! run and marks the message a [`Suspect`]. A suspect runs alone: it waits
//! until nothing else of this layer is in flight, and nothing else starts
//! until it ends, so a repeat crash charges only it. Once its attempts are
//! spent it is dead-lettered as [`ErrorKind::Crashed`](crate::error::ErrorKind::Crashed)
//! without running. Leases released on shutdown, revoke, a deferral or a
//! dropped future never count (a future dropped at the shutdown deadline
//! releases from a spawned task: if the process exits first, that lease
//! expires and counts). Without a shared durable store (the
//! [`MemoryStore`] dies with the process) nothing counts crashes: the
//! broker's own limits bound the loop (RabbitMQ quorum queues'
//! `x-delivery-limit`), and on Kafka nothing does.

mod batched;
mod claim;
mod gate;
mod guard;
mod held;
mod key;
mod keyspace;
mod layer;
pub mod layout;
mod measured;
mod memory;
mod namespaced;
mod renew;
mod store;

pub use self::batched::{BatchConfig, Batched};
pub use self::held::HeldMarks;
pub use self::key::{Key, KeySource, MAX_KEY_LEN};
pub use self::keyspace::Keyspace;
pub use self::layer::IdempotencyLayer;
pub use self::layout::{KeyLayout, Layout, LayoutError};
pub use self::measured::Measured;
use self::measured::{StoreOps, Timed};
pub use self::memory::MemoryStore;
pub use self::namespaced::Namespaced;
pub use self::store::{Claim, ClaimOf, Fence, Held, MAX_LETTER_TEXT, Store, StoreError};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::Service;

use self::claim::{Keys, claim, settle};
use self::gate::Gate;
use self::guard::LeaseGuard;
use self::renew::Renewer;
use crate::at_once::{self, AtOnce};
use crate::dead_letter::PendingLetter;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::request::Request;

/// How the idempotency layer keys and leases messages.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the key comes from.
    pub key: KeySource,
    /// How long a lease lasts without renewal (renewed every lease/3).
    pub lease: Duration,
    /// This worker's name in lease owners (unique per process by default).
    pub worker: String,
    /// A service name added to every message's [`Keyspace`] (never in
    /// place of its source): for two services that consume one queue or
    /// group under one name and must deduplicate apart.
    pub service: Option<String>,
    /// How a remote store's calls are batched ([`Batched`]); `None` sends
    /// each message's calls on their own. Only a store whose
    /// [`Store::remote`] is true is batched (Redis and PostgreSQL; never
    /// the in-memory store). On by default, with
    /// [`BatchConfig::default`].
    pub batch: Option<BatchConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key: KeySource::default(),
            lease: Duration::from_secs(30),
            worker: crate::message::new_message_id(),
            service: None,
            batch: Some(BatchConfig::default()),
        }
    }
}

impl Config {
    /// The default config with keys from `key`.
    pub fn keyed_by(key: KeySource) -> Self {
        Config {
            key,
            ..Config::default()
        }
    }

    /// Adds `name` to every message's keyspace (see [`Config::service`](Config#structfield.service)).
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// Sends each message's store calls on their own, never batched
    /// (see [`Config::batch`](Config#structfield.batch)).
    #[must_use]
    pub fn unbatched(mut self) -> Self {
        self.batch = None;
        self
    }
}

/// The threads that have named owners so far: each takes its own range of
/// owner numbers (`thread << 40`), so naming one takes no shared atomic.
static OWNER_THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The next owner number of this thread.
    static NEXT_OWNER: std::cell::Cell<u64> = std::cell::Cell::new(OWNER_THREADS.fetch_add(1, Ordering::Relaxed) << 40);
}

/// In a request's extensions while its run holds a lease: the key as the
/// store keeps it and the lease's fencing token, for wrappers that check the
/// fence inside their own transaction (the PostgreSQL inbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseToken {
    /// The key as stored (namespaces applied, see [`Store::storage_key`]).
    pub key: Key,
    /// The lease's fencing token.
    pub fence: Fence,
    /// The failed runs the store has on record for the key (crashed runs
    /// included): the count to trust over any header, so this run is
    /// attempt `failed_runs + 1` at the most that the store can confirm.
    pub failed_runs: u32,
}

/// In a request's extensions when its previous run ended without a result
/// (its lease was taken over after expiry): the message is a suspect, runs
/// alone, and is dead-lettered as `crashed` once its attempts are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspect {
    /// Failed runs on record, the crashed ones included.
    pub failed_runs: u32,
}

/// The store's key layout, asked once per layer: a store's layout does not
/// change while it runs (a migration window is a fixed end time), so no
/// message pays for the question after the first.
pub(crate) type KnownLayout = Arc<tokio::sync::OnceCell<Layout>>;

/// The idempotency service; see the [module docs](self).
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    deduper: Deduper,
}

/// What deduplicating needs, shared by [`Idempotency`] and the stack's
/// pipeline: one source of truth for both.
#[derive(Clone)]
pub(crate) struct Deduper {
    store: Arc<dyn Store>,
    /// The same store, measured, for the background work.
    measured: Arc<dyn Store>,
    ops: Arc<StoreOps>,
    config: Arc<Config>,
    renewer: Arc<Renewer>,
    /// Lets a suspect run alone (see [`gate`]).
    gate: Arc<Gate>,
    layout: KnownLayout,
    /// The store is remote (its calls are round trips, batched): its claims
    /// are not tried at once.
    remote: bool,
    /// The store keeps a claim's owner name ([`Store::keeps_owner`]): a
    /// claim answered at once writes one only then.
    keeps_owner: bool,
}

impl Deduper {
    /// Deduplicates through `store` with `config`; every store call is
    /// timed and its failures counted (see `measured`), unlabelled.
    pub(crate) fn new(store: Arc<dyn Store>, config: Config) -> Self {
        Self::labelled(store, config, &crate::metrics::MetricLabels::default())
    }

    /// As [`new`](Self::new), the store metrics labelled `labels`.
    pub(crate) fn labelled(
        store: Arc<dyn Store>,
        config: Config,
        labels: &crate::metrics::MetricLabels,
    ) -> Self {
        let ops = Arc::new(StoreOps::new(labels));
        let remote = store.remote();
        let keeps_owner = store.keeps_owner();
        let store: Arc<dyn Store> = match config.batch {
            Some(batch) if remote => Arc::new(Batched::sharing(store, batch, Arc::clone(&ops))),
            _ => store,
        };
        Deduper {
            measured: Arc::new(Measured::sharing(Arc::clone(&store), Arc::clone(&ops))),
            store,
            ops,
            config: Arc::new(config),
            renewer: Arc::new(Renewer::new()),
            gate: Arc::default(),
            layout: KnownLayout::default(),
            remote,
            keeps_owner,
        }
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("config", &self.deduper.config)
            .finish_non_exhaustive()
    }
}

impl<S, T> Service<Request<T>> for Idempotency<S>
where
    S: Service<Request<T>, Response = Outcome, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    T: Send + Sync + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        if self.deduper.config.key.raw_of(&request).is_none() {
            return Box::pin(self.inner.call(request));
        }
        // The ready service runs this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let deduper = self.deduper.clone();
        Box::pin(async move { deduper.run(request, move |r| inner.call(r)).await })
    }
}

impl Deduper {
    /// Runs `inner` on `request` at most once per key: claims the key's
    /// lease (acking a duplicate without running), runs, then records the
    /// outcome; see the [module docs](self). [`claim`](Self::claim) and
    /// [`settle`](Self::settle), in that order around the run.
    ///
    /// `request` is the request itself (the tower layer, whose inner service
    /// takes it) or a `&mut` to it (the pipeline, which lends it on).
    pub(crate) async fn run<T: Send + Sync, R, Fut>(
        &self,
        mut request: R,
        inner: impl FnOnce(R) -> Fut,
    ) -> Result<Outcome, Error>
    where
        R: std::borrow::BorrowMut<Request<T>>,
        Fut: std::future::Future<Output = Result<Outcome, Error>>,
    {
        match self.claim(request.borrow_mut()).await {
            Admission::Ended(end) => end,
            Admission::Unkeyed => inner(request).await,
            Admission::Leased(held) => {
                let result = inner(request).await;
                self.settle(held, result).await
            }
        }
    }

    /// Calls `f` with the next claim's owner name: `<worker>/<n>`, or empty
    /// for a store that keeps none ([`Store::keeps_owner`]).
    fn with_owner<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        if self.keeps_owner {
            Owner::with_next(&self.config.worker, f)
        } else {
            f("")
        }
    }

    /// Claims the lease of `request`'s key before its run: what the run
    /// holds, or the message's end (a duplicate, a busy key, a store that
    /// is down).
    ///
    /// A store that answers at once ([`Store::claim_now`]) is claimed here,
    /// without a future; a remote store's claim, a suspect's wait for the
    /// gate and the first claim's layout lookup are boxed. Either way the
    /// claim's own state (the owner's name, the keys, the store's call)
    /// ends with it, so a caller's future does not keep it through the run.
    fn claim<'a, T: Send + Sync>(&'a self, request: &'a mut Request<T>) -> AtOnce<'a, Admission> {
        let config = &self.config;
        // A message without a key runs without the store (even while it is down).
        let Some(raw) = config.key.raw_of(request) else {
            return at_once::now(Admission::Unkeyed);
        };
        let (false, Some(layout), Some(shared)) =
            (self.remote, self.layout.get(), self.gate.try_shared())
        else {
            return at_once::later(self.claim_later(request));
        };
        let keys = Keys::of(
            *layout,
            raw,
            &request.message().meta,
            config.service.as_deref(),
        );
        let replay = request.message().replayed();
        let claimed = tokio::time::Instant::now();
        let claim_as = |owner: &str| {
            let claim = claim::claim_now(&*self.measured, &keys, owner, config.lease, replay);
            // A suspect claims again under the same name, after a wait.
            let suspect = matches!(&claim, Some(Ok(lease)) if lease.crashed);
            (claim, suspect.then(|| Owner(owner.to_owned())))
        };
        let (claim, owner) = self.with_owner(claim_as);
        match (claim, owner) {
            // The store has no answer at once: nothing was called.
            (None, _) => at_once::later(self.claim_later(request)),
            (Some(Err(end)), _) => at_once::now(Admission::Ended(claim_ended(request, end))),
            (Some(Ok(lease)), Some(owner)) => {
                drop(shared);
                at_once::later(self.suspect(request, keys, owner, replay, lease))
            }
            (Some(Ok(lease)), None) => at_once::now(Admission::Leased(self.leased(
                request,
                &keys,
                lease,
                claimed,
                Gated::Shared(shared),
            ))),
        }
    }

    /// [`claim`](Self::claim) through the store's future.
    async fn claim_later<T>(&self, request: &mut Request<T>) -> Admission {
        let config = &self.config;
        let store = Timed::new(&*self.store, &self.ops);
        let Some(raw) = config.key.raw_of(request) else {
            return Admission::Unkeyed;
        };
        let owner = self.with_owner(|owner| Owner(owner.to_owned()));
        let replay = request.message().replayed();
        let layout = match self.layout.get_or_try_init(|| store.layout()).await {
            Ok(layout) => *layout,
            Err(error) => return Admission::Ended(Err(Error::Store(error))),
        };
        let keys = Keys::of(
            layout,
            raw,
            &request.message().meta,
            config.service.as_deref(),
        );
        // Taken before the claim, so a run waiting behind a suspect holds no lease.
        let shared = self.gate.shared().await;
        let claimed = tokio::time::Instant::now();
        let lease = match claim(&store, &keys, owner.name(), config.lease, replay).await {
            Ok(lease) => lease,
            Err(end) => return Admission::Ended(claim_ended(request, end)),
        };
        if lease.crashed {
            drop(shared);
            return self.suspect(request, keys, owner, replay, lease).await;
        }
        Admission::Leased(self.leased(request, &keys, lease, claimed, Gated::Shared(shared)))
    }

    /// A suspect runs alone. It waits for that without a lease: if the run
    /// ahead of it kills the process, this one's count must not grow. The
    /// takeover's count (`lease`) stays recorded.
    async fn suspect<T>(
        &self,
        request: &mut Request<T>,
        keys: Keys,
        owner: Owner,
        replay: u32,
        lease: claim::Claimed,
    ) -> Admission {
        let store = Timed::new(&*self.store, &self.ops);
        tracing::warn!(key = %keys.key, failed_runs = lease.failed_runs, "the previous run of this message ended without a result; running it alone");
        if let Err(error) = lease.release(&store, &keys).await {
            return Admission::Ended(Err(error));
        }
        let alone = self.gate.alone().await;
        let claimed = tokio::time::Instant::now();
        let lease = match claim(&store, &keys, owner.name(), self.config.lease, replay).await {
            Ok(lease) => lease,
            Err(end) => return Admission::Ended(claim_ended(request, end)),
        };
        request.extensions.insert(Suspect {
            failed_runs: lease.failed_runs,
        });
        Admission::Leased(self.leased(request, &keys, lease, claimed, Gated::Alone(alone)))
    }

    /// What a run holds under `lease` (claimed at `claimed`), with
    /// `request` set up for it: the store's count of failed runs, a
    /// pending letter, the lease's cancellation and [`LeaseToken`].
    fn leased<T>(
        &self,
        request: &mut Request<T>,
        keys: &Keys,
        mut lease: claim::Claimed,
        claimed: tokio::time::Instant,
        gate: Gated,
    ) -> Leased {
        let config = &self.config;
        request.confirm_failed_runs(lease.failed_runs);
        crate::lifecycle::claimed(&request.message().meta, request.attempt());
        if let Some(failure) = lease.letter.take() {
            // The run failed before and its letter is still to be written:
            // the dead-letter layer writes only that letter.
            request.extensions.insert(PendingLetter(failure));
        }
        // The key's lease, and the legacy key's while a migration reads
        // both. Each lease's tripwire nests in the one before it, and the
        // run is cancelled by the last: it fires if any lease is lost. The
        // key's lease holds the request's token.
        let mut token = Some(LeaseToken {
            key: self.store.storage_key(&keys.key),
            fence: lease.fence,
            failed_runs: lease.failed_runs,
        });
        let mut outer = request.cancel_mut().trip();
        let guards: smallvec::SmallVec<[LeaseGuard; 2]> = lease
            .held(keys)
            .map(|(key, fence)| {
                let guard = LeaseGuard::hold(
                    Arc::clone(&self.measured),
                    Arc::clone(&self.renewer),
                    config.lease,
                    key,
                    fence,
                    token.take(),
                    claimed,
                    outer.take(),
                );
                outer = Some(guard.tripwire());
                guard
            })
            .collect();
        if let Some(lost) = outer {
            request.cancel_mut().tripped_by(lost);
        }
        if let Some(first) = guards.first() {
            request.extensions.insert_held::<LeaseToken>(first.holder());
        }
        // In a source's transaction (Kafka exactly-once), the marks wait
        // for its commit: see `crate::transaction`.
        let transaction = request
            .extensions
            .get::<crate::transaction::InTransaction>()
            .cloned();
        Leased {
            guards,
            transaction,
            _gate: gate,
        }
    }

    /// Records the result of the run that `held` was claimed for: its
    /// outcome written under the lease (or, in a source's transaction,
    /// held for its commit). A handled message whose completion cannot be
    /// written is not acked: it is redelivered.
    ///
    /// A completion the store writes at once ([`Store::complete_now`]) is
    /// written here, without a future; any other write is boxed.
    fn settle(
        &self,
        held: Leased,
        result: Result<Outcome, Error>,
    ) -> AtOnce<'_, Result<Outcome, Error>> {
        let Leased {
            guards,
            transaction,
            _gate,
        } = held;
        if let Some(transaction) = transaction
            && let Some(waiting) = HeldMarks::waiting(&result)
        {
            transaction
                .0
                .hold(HeldMarks::new(&self.measured, guards, waiting));
            return at_once::now(result);
        }
        guards.iter().for_each(LeaseGuard::settling);
        // A completion the store writes at once (one lease: no migration).
        if let [guard] = guards.as_slice()
            && let Some(written) =
                claim::settle_now(&*self.measured, guard.key(), guard.fence(), &result)
        {
            let unwritten = guards
                .into_iter()
                .next()
                .and_then(|guard| ended(guard, written));
            return at_once::now(completed(result, unwritten));
        }
        at_once::later(async move {
            let store = Timed::new(&*self.store, &self.ops);
            let mut unwritten = None;
            for guard in guards {
                let written = settle(&store, guard.key(), guard.fence(), &result).await;
                unwritten = unwritten.or(ended(guard, written));
            }
            // Held until the writes are done (and captured by this move).
            drop(_gate);
            completed(result, unwritten)
        })
    }
}

/// Ends `guard` by the write of its outcome: finished, or (the write
/// failed) its completion retried in the background; the error then.
fn ended(
    guard: LeaseGuard,
    written: Result<(), crate::error::StoreError>,
) -> Option<crate::error::StoreError> {
    match written {
        Ok(()) => {
            guard.finish();
            None
        }
        Err(error) => {
            guard.complete_later();
            Some(error)
        }
    }
}

/// A message's end once its outcome's write was tried: not acked unless
/// its completion is written (it is redelivered).
fn completed(
    result: Result<Outcome, Error>,
    unwritten: Option<crate::error::StoreError>,
) -> Result<Outcome, Error> {
    match (result, unwritten) {
        (Ok(Outcome::Handled | Outcome::Discarded { .. }), Some(error)) => Err(Error::Store(error)),
        (result, _) => result,
    }
}

/// A claim's owner name, `<worker>/<n>`.
struct Owner(String);

thread_local! {
    /// The buffer a claim answered at once writes its owner's name into:
    /// no allocation, and no check of text built from text.
    static OWNER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Owner {
    /// Calls `f` with the next owner name of `worker`, written into this
    /// thread's buffer (a re-entrant call gets a buffer of its own).
    fn with_next<R>(worker: &str, f: impl FnOnce(&str) -> R) -> R {
        let mut digits = itoa::Buffer::new();
        let n = digits.format(NEXT_OWNER.with(|next| next.replace(next.get() + 1)));
        let write = |name: &mut String| {
            name.clear();
            name.push_str(worker);
            name.push('/');
            name.push_str(n);
        };
        OWNER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut name) => {
                write(&mut name);
                f(&name)
            }
            Err(_) => {
                let mut name = String::new();
                write(&mut name);
                f(&name)
            }
        })
    }

    /// The name.
    fn name(&self) -> &str {
        &self.0
    }
}

/// A run's hold on the suspects' gate: shared, or the gate alone (a
/// suspect). Held for its drop, which releases the gate.
#[expect(dead_code, reason = "held for its drop, never read")]
enum Gated {
    Shared(gate::Shared),
    Alone(gate::Alone),
}

/// What [`Deduper::claim`] decided for a message.
enum Admission {
    /// The message has no key: it runs without the store.
    Unkeyed,
    /// Its key's lease is held: run it, then [`Deduper::settle`].
    Leased(Leased),
    /// Its end, without running (a duplicate, a busy key, a store that is
    /// down).
    Ended(Result<Outcome, Error>),
}

/// What a claimed run holds until it is settled: its leases (renewed
/// meanwhile), its share of the suspects' gate (or the gate alone), and
/// the source's transaction it runs in, if any.
struct Leased {
    guards: smallvec::SmallVec<[LeaseGuard; 2]>,
    transaction: Option<crate::transaction::InTransaction>,
    _gate: Gated,
}

/// The end of a message's way through the layer that its claim decided
/// (a duplicate, a busy key, a store that is down), with its lifecycle event.
fn claim_ended<T>(request: &Request<T>, end: Result<Outcome, Error>) -> Result<Outcome, Error> {
    if let Ok(Outcome::Duplicate) = end {
        crate::lifecycle::duplicate(&request.message().meta);
    }
    end
}

#[cfg(test)]
mod keyspace_tests;
#[cfg(test)]
mod tests;
