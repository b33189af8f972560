//! The consumer thread: a [`BaseConsumer`] polled on a dedicated OS thread.
//!
//! Why a thread of its own: librdkafka wants `poll` called steadily (at
//! least every `max.poll.interval.ms`), and rebalance callbacks run inside
//! `poll`. Polling from the source's `next` would tie both to how fast the
//! runner takes messages: with every permit taken by slow handlers nobody
//! would poll, and a revoke would wait for a handler. The thread polls all
//! the time; back-pressure is per partition, by `pause()`, when a partition
//! tracks too many unfinished messages (or holds a retry that is not due).
//! It stores each partition's watermark (last done + 1) with
//! `store_offsets`; librdkafka's auto commit commits what was stored. On
//! revoke it fences the partitions and stores their final watermarks, which
//! librdkafka commits as part of the unassignment: the rebalance does not go
//! on until that commit finished, so the new owner starts where this member
//! stopped. On close it commits everything done (synchronously), then leaves
//! the group. A panic on the thread is caught and reported to the source as
//! a fatal error, so a dead thread never leaves the source waiting.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backstop::runner::Liveness;
use backstop::runner::SourceError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message as _, Offset};
use tokio::sync::oneshot;

use self::context::locked;
pub(crate) use self::context::{GroupContext, SharedTransactor, list, partitions};
use crate::dispatch::{Dispatcher, Incoming};
use crate::link::Link;
use crate::parked_reader::ParkedReader;
use crate::source::RetryTable;
use crate::telemetry::SourceMetrics;
use crate::topic_partition::TopicPartition;
use crate::{Error, record};

mod context;

/// How long the thread blocks in one `poll` at most.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How often watermarks are stored and pauses revisited while messages flow.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(10);
/// At most this many messages are tracked under one lock.
const BATCH: usize = 256;
/// A batch ends once it holds this many payload bytes: a batch is taken
/// before the budgets are checked, so this bounds how far they overshoot.
const BATCH_BYTES: usize = 1 << 20;
/// Repeated client errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(5);
/// While the cluster is unreachable, an idle thread checks this often
/// whether it is back (a metadata request, at most this long).
const RECONNECT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a close waiting for the thread looks whether it is stuck.
const STOP_LOOK_EVERY: Duration = Duration::from_millis(250);

/// The running consumer thread.
#[derive(Debug)]
pub(crate) struct PollThread {
    stop: Arc<AtomicBool>,
    /// Set by the transactional producer's watchdog: the thread is blocked
    /// in librdkafka for good, and closing does not wait for it.
    stuck: Arc<AtomicBool>,
    done: Option<oneshot::Receiver<()>>,
    liveness: Liveness,
}

impl PollThread {
    /// Starts polling `consumer` (already subscribed) on a new thread.
    ///
    /// If the thread panics, the source reports a fatal error (the runner
    /// stops with it) and then ends: a dead poll thread never leaves `next`
    /// waiting forever.
    pub(crate) fn start(
        consumer: BaseConsumer<GroupContext>,
        dispatcher: Arc<Dispatcher>,
        delayed: Arc<RetryTable>,
        group: String,
        link: Arc<Link>,
        (metrics, metrics_every): (Arc<SourceMetrics>, Duration),
        (transactor, reader): (Option<SharedTransactor>, Option<ParkedReader>),
    ) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let stuck = Arc::new(AtomicBool::new(false));
        let liveness = Liveness::new(format!("the Kafka poll thread of group {group:?}"));
        if let Some(transactor) = &transactor {
            let mut transactor = locked(transactor);
            transactor.watch(liveness.clone());
            let source = Arc::clone(&dispatcher);
            let flag = Arc::clone(&stuck);
            transactor
                .guard(move |error| {
                    flag.store(true, Ordering::Release);
                    source.report(error);
                    source.close();
                })
                .map_err(Error::Thread)?;
        }
        let (tx, rx) = oneshot::channel();
        let watch = Arc::clone(&dispatcher);
        let name = group.clone();
        let poller = Poller {
            consumer,
            dispatcher,
            delayed,
            stop: Arc::clone(&stop),
            topics: HashMap::default(),
            last_error_log: None,
            disconnected: false,
            batch: Vec::with_capacity(BATCH),
            freed: Vec::new(),
            transactor,
            reader,
            group: group.into(),
            link,
            last_check: None,
            liveness: liveness.clone(),
            metrics,
            metrics_every,
        };
        std::thread::Builder::new()
            .name("backstop-kafka-poll".into())
            .spawn(move || {
                // The consumer is dropped while unwinding, so the member leaves the group.
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| poller.run())) {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned());
                    tracing::error!(group = %name, %reason, "the Kafka consumer thread panicked; the source stops");
                    watch.report(SourceError::Fatal(
                        format!(
                            "the Kafka consumer thread of group {name:?} died ({reason}); nothing is fetched or committed any more, restart the worker"
                        )
                        .into(),
                    ));
                    watch.close();
                }
                let _ = tx.send(());
            })
            .map_err(Error::Thread)?;
        Ok(PollThread {
            stop,
            stuck,
            done: Some(rx),
            liveness,
        })
    }

    /// When the thread's loop last turned (it turns at least every 20 ms).
    pub(crate) fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Asks the thread to commit, leave the group and end; waits up to `wait`.
    pub(crate) async fn stop(&mut self, wait: Duration) {
        self.stop.store(true, Ordering::Release);
        let Some(mut done) = self.done.take() else {
            return;
        };
        let until = tokio::time::Instant::now() + wait;
        // `stuck` is looked at between short waits: the watchdog may find
        // the thread blocked in the final commit of its close.
        loop {
            if self.stuck.load(Ordering::Acquire) {
                tracing::warn!(
                    "the consumer thread is blocked in a transactional call; not waiting for it (the process's exit ends it)"
                );
                return;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(?wait, "consumer thread did not finish closing in time");
                return;
            }
            if tokio::time::timeout(left.min(STOP_LOOK_EVERY), &mut done)
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

impl Drop for PollThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct Poller {
    consumer: BaseConsumer<GroupContext>,
    dispatcher: Arc<Dispatcher>,
    delayed: Arc<RetryTable>,
    stop: Arc<AtomicBool>,
    /// What is known of each topic read, looked up once per message (a
    /// fast hasher; the names are the group's own subscriptions).
    topics: HashMap<String, Topic, foldhash::fast::RandomState>,
    last_error_log: Option<Instant>,
    disconnected: bool,
    /// Reused between polls, so a batch costs no allocation.
    batch: Vec<Incoming>,
    /// Messages settled done, dropped here: this thread allocated them.
    /// One is dropped before each message is made, so the blocks it frees
    /// are the ones the next message takes from this thread's cache
    /// (dropping a batch at once overflows glibc's small per-thread cache
    /// of free blocks, and each block then goes through the heap's bins,
    /// as does each allocation after it); at most a batch's worth is kept
    /// between batches, and none by an idle thread
    /// ([`keep_for_next_batch`]).
    freed: Vec<Arc<backstop::Message>>,
    /// Exactly-once mode: commits on this thread.
    transactor: Option<SharedTransactor>,
    /// Ordered retries: reads the parked partitions back.
    reader: Option<ParkedReader>,
    /// The consumer group: stamped on every message ([`backstop::message::Meta::group`],
    /// part of its idempotency keyspace: one copy, shared by every message);
    /// also named by the test that kills the thread.
    group: Arc<str>,
    /// Whether the consumer reaches the cluster, for the runner's readiness.
    link: Arc<Link>,
    /// When an unreachable cluster was last checked.
    last_check: Option<Instant>,
    /// Beaten every turn; ended when the thread closes.
    liveness: Liveness,
    /// The lag gauges and failure counters, reported every `metrics_every`.
    metrics: Arc<SourceMetrics>,
    metrics_every: Duration,
}

/// Consumer groups whose poll thread panics on its next poll (tests only).
#[cfg(test)]
pub(crate) static PANIC_IN_POLL: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Poller {
    fn run(mut self) {
        if let Some(transactor) = &self.transactor
            && let Err(error) = locked(transactor).init()
        {
            tracing::error!(%error, "exactly-once mode could not start");
            self.dispatcher.report(error);
            self.stop.store(true, Ordering::Release);
        }
        let mut last_maintenance = Instant::now();
        let mut last_report = last_maintenance;
        while !self.stop.load(Ordering::Acquire) {
            self.liveness.beat();
            let idle = self.poll_batch();
            if idle && self.disconnected {
                self.check_reconnected();
            }
            if idle || last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                if let Some(reader) = &mut self.reader {
                    reader.read(&self.dispatcher);
                }
                self.maintain(idle);
                self.transact(false);
                last_maintenance = Instant::now();
                if last_maintenance - last_report >= self.metrics_every {
                    self.metrics.report(self.dispatcher.heads());
                    if self.reader.is_some() {
                        crate::telemetry::parked_now(&self.group, self.dispatcher.parked_now());
                    }
                    last_report = last_maintenance;
                }
            }
        }
        self.close();
    }

    fn poll_timeout(&self) -> Duration {
        match self.dispatcher.next_due() {
            Some(due) => due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(POLL_TIMEOUT),
            None => POLL_TIMEOUT,
        }
    }

    /// Polls one message (waiting up to the poll timeout), then whatever
    /// else is already fetched, up to [`BATCH`] messages or [`BATCH_BYTES`],
    /// and tracks them under one lock. Returns true when nothing arrived.
    fn poll_batch(&mut self) -> bool {
        #[cfg(test)]
        if PANIC_IN_POLL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|group| **group == *self.group)
        {
            panic!("injected failure in the poll thread of {}", self.group);
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut timeout = self.poll_timeout();
        let mut bytes = 0;
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(record)) => {
                    drop(self.freed.pop());
                    let topic = known(&mut self.topics, &self.delayed, record.topic());
                    let retry_of = topic.retry.as_ref().map(|(source, _)| &**source);
                    let mut message = record::guarded_message(&record, &topic.name, retry_of);
                    let hold = topic.retry.map(|(_, hold)| hold);
                    drop(record);
                    message.meta.group = Some(Arc::clone(&self.group));
                    bytes += message.payload.len();
                    // Read after the poll returned: a rewind inside it (an
                    // abort in a revoke callback) predates this message.
                    let epoch = self.dispatcher.rewind_epoch();
                    // Shared from here on: the tracker keeps it and hands it
                    // out without moving the message again.
                    batch.push(incoming(Arc::new(message), hold, epoch));
                }
                Some(Err(error)) => {
                    self.on_error(error);
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        if batch.is_empty() {
            self.batch = batch;
            return true;
        }
        if std::mem::take(&mut self.disconnected) {
            self.link.up();
            self.metrics.reconnected();
        }
        let mut pause = Vec::new();
        self.dispatcher
            .receive_all(&mut batch, &mut pause, &mut self.freed);
        keep_for_next_batch(&mut self.freed, false);
        self.batch = batch;
        if !pause.is_empty()
            && let Err(error) = self.consumer.pause(&partitions(&pause))
        {
            tracing::warn!(%error, "pausing a full partition failed");
        }
        false
    }

    /// Exactly-once mode: commits a transaction when one is due (or, with
    /// `now`, whatever is done). A producer that cannot go on stops the
    /// source with its fatal error.
    fn transact(&mut self, now: bool) {
        let Some(transactor) = &self.transactor else {
            return;
        };
        let mut transactor = locked(transactor);
        if !now && !transactor.due(self.dispatcher.settled()) {
            return;
        }
        if let Err(error) = transactor.commit(&self.consumer, &self.dispatcher) {
            self.dispatcher.report(error);
            self.stop.store(true, Ordering::Release);
        }
    }

    fn maintain(&mut self, idle: bool) {
        self.dispatcher.take_freed(&mut self.freed);
        keep_for_next_batch(&mut self.freed, idle);
        let actions = self.dispatcher.maintain();
        if actions.is_empty() {
            return;
        }
        if !actions.pause.is_empty()
            && let Err(error) = self.consumer.pause(&partitions(&actions.pause))
        {
            tracing::warn!(%error, "pausing partitions failed");
        }
        if !actions.resume.is_empty()
            && let Err(error) = self.consumer.resume(&partitions(&actions.resume))
        {
            tracing::warn!(%error, "resuming partitions failed");
        }
        // Exactly-once: offsets go with the transactions, never stored.
        if !actions.store.is_empty() && self.transactor.is_none() {
            match self.consumer.store_offsets(&list(&actions.store)) {
                Ok(()) => self.dispatcher.mark_stored(&actions.store),
                // A partition revoked a moment ago: expected, not fatal.
                Err(error) => {
                    self.metrics.commit_failed();
                    tracing::debug!(%error, "storing offsets failed")
                }
            }
        }
        if idle && !actions.idle.is_empty() {
            self.advance_idle(&actions.idle);
        }
    }

    /// Lets fully processed partitions commit past trailing control records.
    fn advance_idle(&mut self, idle: &[TopicPartition]) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let idle: HashSet<&TopicPartition> = idle.iter().collect();
        let mut advance = Vec::new();
        for e in positions.elements() {
            if let Offset::Offset(o) = e.offset() {
                let tp = TopicPartition::new(e.topic(), e.partition());
                if idle.contains(&tp) {
                    advance.push((tp, o));
                }
            }
        }
        self.dispatcher.advance_idle(&advance);
    }

    fn on_error(&mut self, error: KafkaError) {
        // A fenced static member (another member joined with its
        // `group.instance.id`, or its own rejoin after a coordinator
        // failover) gets no more records: stopping is the only way out,
        // and its supervisor restarts it.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId) {
            tracing::error!(%error, "static group member fenced");
            self.dispatcher.report(SourceError::Fatal(
                format!("Kafka consumer fenced (FENCED_INSTANCE_ID: another member has its group.instance.id, or it was replaced after a coordinator failover): {error}").into(),
            ));
            self.stop.store(true, Ordering::Release);
            return;
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            let reason = self.consumer.client().fatal_error().map_or_else(
                || error.to_string(),
                |(code, text)| format!("{code}: {text}"),
            );
            tracing::error!(%reason, "consumer failed fatally");
            self.dispatcher.report(SourceError::Fatal(
                format!("Kafka consumer failed: {reason}").into(),
            ));
            self.stop.store(true, Ordering::Release);
            return;
        }
        let transport = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        // One broker gone is not the cluster gone: readiness follows only
        // the loss of every broker (which often comes after a first
        // broker's transport failure, so not only on the first error).
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.link
                .down(format!("the Kafka cluster cannot be reached: {error}"));
        }
        if transport && !self.disconnected {
            self.disconnected = true;
            self.dispatcher
                .report(SourceError::Disconnected(Box::new(error.clone())));
        }
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(Instant::now());
            tracing::warn!(%error, "consumer error; librdkafka retries by itself");
        }
    }

    /// While the cluster was unreachable and nothing arrives: is it back?
    /// (An idle topic brings no record to say so.)
    fn check_reconnected(&mut self) {
        if self
            .last_check
            .is_some_and(|t| t.elapsed() < RECONNECT_CHECK_EVERY)
        {
            return;
        }
        self.last_check = Some(Instant::now());
        // One subscribed topic: a whole cluster's metadata may not fit the timeout.
        let topic = self.consumer.subscription().ok().and_then(|list| {
            list.elements()
                .first()
                .map(|element| element.topic().to_owned())
        });
        if self
            .consumer
            .fetch_metadata(topic.as_deref(), RECONNECT_CHECK_EVERY)
            .is_ok()
        {
            self.disconnected = false;
            self.link.up();
            self.metrics.reconnected();
            tracing::info!("the Kafka cluster is reachable again");
        }
    }

    fn close(mut self) {
        self.liveness.end();
        self.dispatcher.close();
        let actions = self.dispatcher.maintain();
        if !actions.store.is_empty()
            && self.transactor.is_none()
            && self.consumer.store_offsets(&list(&actions.store)).is_err()
        {
            self.metrics.commit_failed();
        }
        // Fully processed partitions commit past trailing transaction
        // markers, as the running loop does when idle: a consumer closed
        // right after its last record does not leave its group's commit
        // on a marker.
        if !actions.idle.is_empty() {
            self.advance_idle(&actions.idle);
        }
        let commit = if self.transactor.is_some() {
            self.transact(true);
            Vec::new()
        } else {
            self.dispatcher.to_commit()
        };
        if !commit.is_empty() {
            match self.consumer.commit(&list(&commit), CommitMode::Sync) {
                Ok(()) => self.dispatcher.mark_committed(&commit),
                Err(error) => {
                    self.metrics.commit_failed();
                    tracing::warn!(%error, "final commit failed; finished messages may be redelivered")
                }
            }
        }
        // Dropping the consumer leaves the group (its revoke callback runs here).
        drop(self.consumer);
    }
}

/// A polled message as the dispatcher tracks it. `hold` is its topic's
/// longest hold when the topic is a retry topic: a retry topic holds a
/// message until its due time, but never longer than its tier's delay from
/// now (a far-future `x-backstop-due`, from a long `retry_after` or a fast
/// clock at the writer, must not park the partition).
fn incoming(message: Arc<backstop::Message>, hold: Option<Duration>, epoch: u64) -> Incoming {
    let topic = Arc::clone(&message.meta.source);
    let tp = TopicPartition::new(topic, message.meta.partition.unwrap_or_default());
    let delayed = message.meta.retry_of.is_some();
    let due = hold.filter(|_| delayed).and_then(|limit| {
        let due = record::due(&message)?;
        Some(due.min(SystemTime::now() + limit))
    });
    Incoming {
        tp,
        message,
        due,
        delayed,
        epoch,
    }
}

/// What the poll thread knows of a topic it reads.
#[derive(Clone)]
struct Topic {
    /// The name's one copy, shared by every message of the topic
    /// ([`Meta::source`](backstop::message::Meta::source)).
    name: Arc<str>,
    /// When it is one of the retry topics: the source its copies belong
    /// to, and the longest a copy is held for its due time.
    retry: Option<(Arc<str>, Duration)>,
}

/// What is known of the topic `name` (learnt on first sight, from the
/// retry topics' table).
fn known(
    topics: &mut HashMap<String, Topic, foldhash::fast::RandomState>,
    retries: &RetryTable,
    name: &str,
) -> Topic {
    if let Some(topic) = topics.get(name) {
        return topic.clone();
    }
    let topic = Topic {
        name: Arc::from(name),
        retry: retries
            .get(name)
            .map(|route| (Arc::from(route.source.as_str()), route.hold_limit)),
    };
    topics.insert(name.to_owned(), topic.clone());
    topic
}

/// Drops what the next batch would not: every settled message when the
/// thread is idle, else all but the newest [`BATCH`] messages or
/// [`BATCH_BYTES`] of messages (payload, key, headers and bookkeeping, as
/// the partitions' budgets count them), whichever is less.
fn keep_for_next_batch(freed: &mut Vec<Arc<backstop::Message>>, idle: bool) {
    if idle {
        freed.clear();
        return;
    }
    let mut bytes = 0;
    let kept = freed
        .iter()
        .rev()
        .take(BATCH)
        .take_while(|m| {
            bytes += crate::tracker::size_of_message(m);
            bytes <= BATCH_BYTES
        })
        .count();
    freed.drain(..freed.len() - kept);
}

#[cfg(test)]
mod tests;
