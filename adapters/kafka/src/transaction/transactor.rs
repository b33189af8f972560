//! [`Transactor`]: the transactional producer, committing on the poll
//! thread (see the [module docs](super)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::runner::Liveness;
use backstop::runner::SourceError;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::watchdog::{Call, CallWatch};
use super::{ExactlyOnce, Pending, Record};
use crate::dispatch::{Dispatcher, ToCommit};
use crate::poller::{list, partitions};
use crate::topic_partition::TopicPartition;
use crate::{Error, KafkaConfig, record};

/// Transactions counted by result.
const TRANSACTIONS: &str = "backstop_kafka_transactions_total";
/// The longest wait after consecutive aborts before trying again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a call may block past its timeout before the source stops
/// (see [`super::watchdog`]): as long as the timeout, within these bounds.
const STUCK_GRACE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));
/// A transaction that takes this long to finish is logged.
const SLOW_COMMIT: Duration = Duration::from_secs(5);
/// The longest a partition count is looked up for (inside a transaction).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Aborts in a row from which each is logged as an error.
const ABORTS_BEFORE_ERROR: u32 = 3;

/// Consumer groups whose `send_offsets_to_transaction` blocks for two
/// minutes, as librdkafka's does with a lost coordinator (tests only).
#[cfg(test)]
pub(crate) static HANG_IN_SEND_OFFSETS: std::sync::Mutex<Vec<String>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn hang_if_asked(group: &str) {
    let hang = HANG_IN_SEND_OFFSETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|g| g == group);
    if hang {
        std::thread::sleep(Duration::from_secs(120));
    }
}

/// Why a transaction did not commit.
enum Failed {
    /// Aborted: its partitions are rewound and run again.
    Abort(KafkaError),
    /// The producer cannot go on: the source stops.
    Fatal(String),
}

/// What one commit did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Committed {
    /// Nothing new was settled.
    Nothing,
    /// Committed, with this many records.
    Records(usize),
    /// Aborted; the transaction's partitions were rewound.
    Aborted,
}

/// The source's transactional producer and its commit loop's state.
pub(crate) struct Transactor {
    /// Polled by a thread of its own, so delivery reports are served
    /// while an abort or a commit waits for the records in flight.
    producer: ThreadedProducer<DefaultProducerContext>,
    pending: Arc<Pending>,
    settings: ExactlyOnce,
    group: String,
    last: Instant,
    /// After an abort, no commit is tried before this.
    not_before: Option<Instant>,
    backoff: Duration,
    /// Aborts since the last commit.
    aborts_in_a_row: u32,
    /// The poll thread's liveness: beaten between the calls of a long
    /// retry, so waiting out a coordinator does not look like a hang.
    liveness: Option<Liveness>,
    /// The call running now, for the watchdog.
    calls: CallWatch,
    /// Partitions per topic of the optional records, and when looked up.
    partitions: std::sync::Mutex<std::collections::HashMap<String, (i32, Instant)>>,
}

impl std::fmt::Debug for Transactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Transactor {
    /// A transactional producer for `settings` (`init_transactions` is
    /// called by [`init`](Self::init), on the poll thread).
    pub(crate) fn new(
        config: &KafkaConfig,
        settings: &ExactlyOnce,
        pending: Arc<Pending>,
    ) -> Result<Self, Error> {
        let producer: ThreadedProducer<DefaultProducerContext> = config
            .transactional_config(settings)
            .create()
            .map_err(Error::Config)?;
        Ok(Transactor {
            producer,
            pending,
            settings: settings.clone(),
            group: config.group.clone(),
            last: Instant::now(),
            not_before: None,
            backoff: settings.commit_interval,
            aborts_in_a_row: 0,
            liveness: None,
            calls: CallWatch::default(),
            partitions: std::sync::Mutex::default(),
        })
    }

    /// Beats `liveness` (the poll thread's) while it waits on the broker.
    pub(crate) fn watch(&mut self, liveness: Liveness) {
        self.liveness = Some(liveness);
    }

    /// Starts the watchdog over this producer's calls: one that blocks
    /// for longer than [`ExactlyOnce::call_timeout`] plus a grace (a
    /// librdkafka defect, see [`super::watchdog`]) calls `stuck` with a
    /// fatal error for the source, once.
    pub(crate) fn guard(
        &self,
        stuck: impl FnOnce(SourceError) + Send + 'static,
    ) -> std::io::Result<()> {
        let id = self.settings.transactional_id.clone();
        let group = self.group.clone();
        let timeout = self.settings.call_timeout;
        let limit = timeout + timeout.clamp(STUCK_GRACE.0, STUCK_GRACE.1);
        self.calls.guard(limit, move |call, running| {
            metrics::counter!(TRANSACTIONS, "group" => group, "result" => "stuck").increment(1);
            tracing::error!(transactional_id = %id, call, ?running, "a call of the Kafka transactional producer does not return (a lost coordinator: confluentinc/librdkafka#5456); the source stops, and the worker's restart aborts the open transaction");
            stuck(SourceError::Fatal(
                format!(
                    "the Kafka transactional producer {id:?} is stuck (TRANSACTIONAL_CALL_STUCK: {call} has not returned after {running:?}, past its timeout; a librdkafka defect when the group coordinator is lost); restart the worker: the restart aborts the open transaction and its messages run again"
                )
                .into(),
            ));
        })
    }

    fn beat(&self) {
        if let Some(liveness) = &self.liveness {
            liveness.beat();
        }
    }

    /// Registers the `transactional.id` with its coordinator, which aborts
    /// a predecessor's open transaction and fences it.
    pub(crate) fn init(&self) -> Result<(), SourceError> {
        // Retried while the coordinator is not reachable yet (a broker
        // starting), within the transaction's timeout.
        self.retrying(Call::Init, || {
            self.producer.init_transactions(self.settings.call_timeout)
        })
        .map_err(|failed| {
            let error = match failed {
                Failed::Abort(error) => error.to_string(),
                Failed::Fatal(reason) => reason,
            };
            SourceError::Fatal(
                format!(
                    "the transactional producer {:?} could not start (init_transactions): {error}",
                    self.settings.transactional_id
                )
                .into(),
            )
        })
    }

    /// True when a commit is due: the interval passed, or `settled`
    /// messages were settled since the last one, enough of them. (A
    /// commit with nothing new to cover costs one look at the watermarks.)
    pub(crate) fn due(&self, settled: usize) -> bool {
        let now = Instant::now();
        self.not_before.is_none_or(|t| now >= t)
            && (settled >= self.settings.commit_every
                || now - self.last >= self.settings.commit_interval)
    }

    /// Commits every partition's watermark with what the deliveries below
    /// it produced, then has their marks written; rewinds on an abort. A
    /// producer that cannot go on (fenced by a newer instance with its id,
    /// a fatal error, a commit whose outcome stays unknown) is a fatal
    /// error: the source stops and its supervisor restarts it.
    pub(crate) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        dispatcher: &Dispatcher,
    ) -> Result<Committed, SourceError> {
        self.last = Instant::now();
        // Not a member (yet, or any more): nothing may be committed, and
        // what waits stays for the next try (or a revoke drops it).
        let Some(metadata) = consumer.group_metadata() else {
            return Ok(Committed::Nothing);
        };
        let ToCommit { offsets, lanes } = dispatcher.take_to_commit();
        if offsets.is_empty() && lanes.is_empty() && !self.pending.has_loose() {
            return Ok(Committed::Nothing);
        }
        // The lanes' deliveries are no offsets of the group (their state
        // is the parked topic itself): their records go as they are done.
        let covered = self.pending.take_covered(&offsets, &lanes);
        let records = covered.records.len();
        let started = Instant::now();
        // A transaction of parked-topic records only moves no offset; it
        // still sends the owned partitions' committed ones, so a member the
        // group fenced (its partitions moved on) cannot commit it.
        let fence = if offsets.is_empty() {
            dispatcher.fence()
        } else {
            Vec::new()
        };
        let sent = if offsets.is_empty() { &fence } else { &offsets };
        let outcome = self.run(&metadata, sent, &covered.records);
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(
                ?took,
                records,
                partitions = offsets.len(),
                committed = outcome.is_ok(),
                "a transaction took long to finish (a coordinator or a partition leader away)"
            );
        }
        match outcome {
            Ok(()) => {
                dispatcher.mark_committed(&offsets);
                for marks in covered.marks {
                    marks.write_in_background();
                }
                self.not_before = None;
                self.backoff = self.settings.commit_interval;
                self.aborts_in_a_row = 0;
                self.count("committed");
                Ok(Committed::Records(records))
            }
            Err(failed) => {
                // Dropped unwritten: the leases are released, not counted.
                drop(covered.marks);
                self.count("aborted");
                match failed {
                    Failed::Abort(error) => {
                        let mut tps: Vec<TopicPartition> =
                            offsets.iter().map(|(tp, _)| tp.clone()).collect();
                        tps.extend(lanes.into_iter().map(|(tp, _)| tp));
                        self.abort(consumer, dispatcher, &tps, &error)?;
                        Ok(Committed::Aborted)
                    }
                    Failed::Fatal(reason) => Err(self.stopped(&reason)),
                }
            }
        }
    }

    fn run(
        &self,
        metadata: &ConsumerGroupMetadata,
        offsets: &[(TopicPartition, i64)],
        records: &[Record],
    ) -> Result<(), Failed> {
        let timeout = self.settings.call_timeout;
        {
            let _running = self.calls.enter(Call::Begin);
            self.producer.begin_transaction()
        }
        .map_err(|e| self.classify(e))?;
        for record in records {
            if record.optional
                && let Some(partition) = record.partition
                && !self.has_partition(&record.destination, partition)
            {
                tracing::error!(topic = %record.destination, partition, "a parked-topic record names a partition the topic does not have (grow it with Kafka::ensure_topics); dropped");
                continue;
            }
            // Queued, not sent: a record the broker refuses fails the commit.
            self.send(record).map_err(|e| match e {
                KafkaError::Transaction(_) => self.classify(e),
                // A record refused locally (too large, an unknown topic):
                // the transaction is open, abort it.
                other => Failed::Abort(other),
            })?;
        }
        // Nothing to send: a transaction of no partition (nothing owned).
        if !offsets.is_empty() {
            self.retrying(Call::SendOffsets, || {
                #[cfg(test)]
                hang_if_asked(&self.group);
                self.producer
                    .send_offsets_to_transaction(&list(offsets), metadata, timeout)
            })?;
        }
        self.retrying(Call::Commit, || self.producer.commit_transaction(timeout))
    }

    /// Calls `call` again while it fails retriably (the transaction's
    /// outcome is not known yet), within the transaction's timeout.
    fn retrying(
        &self,
        name: Call,
        call: impl Fn() -> Result<(), KafkaError>,
    ) -> Result<(), Failed> {
        let until = Instant::now() + self.settings.transaction_timeout;
        loop {
            self.beat();
            let result = {
                let _running = self.calls.enter(name);
                call()
            };
            match result {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < until => {
                    tracing::debug!(error = %e, "transactional call failed retriably; calling it again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(self.classify(error)),
            }
        }
    }

    /// What a failed transactional call leaves: an abort (the broker
    /// refused a record, the group generation moved on) or a producer that
    /// cannot go on (fenced, fatal, an outcome still unknown at the
    /// transaction's timeout, a state error).
    fn classify(&self, error: KafkaError) -> Failed {
        if let Some((code, text)) = self.producer.client().fatal_error() {
            return Failed::Fatal(format!("{code}: {text}"));
        }
        match &error {
            KafkaError::Transaction(e) if e.txn_requires_abort() && !e.is_fatal() => {
                Failed::Abort(error)
            }
            _ => Failed::Fatal(error.to_string()),
        }
    }

    /// True when `topic` has `partition`, as the cluster metadata said at
    /// most a minute ago (looked up again when it seems not to).
    fn has_partition(&self, topic: &str, partition: i32) -> bool {
        let mut known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((count, at)) = known.get(topic)
            && (partition < *count || at.elapsed() < Duration::from_secs(60))
        {
            return partition < *count;
        }
        let count = self
            .producer
            .client()
            .fetch_metadata(Some(topic), self.settings.call_timeout.min(LOOKUP_TIMEOUT))
            .ok()
            .and_then(|m| crate::topics::partition_count(&m, topic));
        // Not known now (the cluster away): sent, and the broker decides;
        // not looked up again for a minute.
        let count = count.unwrap_or(i32::MAX);
        known.insert(topic.to_owned(), (count, Instant::now()));
        partition < count
    }

    /// Queues one record of the open transaction, waiting for room in the
    /// producer's queue (bounded by the call timeout).
    fn send(&self, record: &Record) -> Result<(), KafkaError> {
        let started = Instant::now();
        let message = &record.message;
        loop {
            let mut base: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&record.destination).headers(record::record_headers(message));
            if !record.tombstone {
                base = base.payload(&message.payload[..]);
            }
            if let Some(partition) = record.partition {
                base = base.partition(partition);
            }
            if let Some(key) = &message.key {
                base = base.key(&key[..]);
            }
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if started.elapsed() < self.settings.call_timeout =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Aborts the open transaction and rewinds its partitions (a partition
    /// that cannot be sought back stops the source: reading on from where
    /// the consumer is would commit past the aborted messages).
    fn abort<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        dispatcher: &Dispatcher,
        tps: &[TopicPartition],
        error: &KafkaError,
    ) -> Result<(), SourceError> {
        // An abort waits for the records in flight; one that times out is
        // called again (librdkafka resumes it), within the transaction's
        // timeout. An abort the broker cannot take is fatal.
        tracing::debug!(%error, "aborting the transaction");
        match self.retrying(Call::Abort, || {
            self.producer.abort_transaction(self.settings.call_timeout)
        }) {
            Ok(()) | Err(Failed::Abort(_)) => {}
            Err(Failed::Fatal(reason)) => {
                return Err(self.stopped(&format!("the abort failed: {reason}")));
            }
        }
        let rewound = dispatcher.rewind(tps);
        for (tp, offset) in &rewound {
            let (tp, offset) = (tp.clone(), *offset);
            self.beat();
            if let Err(seek) = consumer.seek(
                &tp.topic,
                tp.partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                return Err(self.stopped(&format!(
                    "{}[{}] could not be sought back to offset {offset} after an abort: {seek}",
                    tp.topic, tp.partition
                )));
            }
        }
        let sought: Vec<TopicPartition> = rewound.into_iter().map(|(tp, _)| tp).collect();
        if !sought.is_empty()
            && let Err(resume) = consumer.resume(&partitions(&sought))
        {
            tracing::debug!(%resume, "resuming rewound partitions failed");
        }
        self.aborts_in_a_row += 1;
        let level_error = self.aborts_in_a_row >= ABORTS_BEFORE_ERROR;
        if level_error {
            tracing::error!(%error, aborts_in_a_row = self.aborts_in_a_row, partitions = tps.len(), retry_in = ?self.backoff, "transactions keep aborting: a record the broker refuses (a DLQ or output topic missing, or too small for a record) holds every partition back until it is fixed");
        } else {
            tracing::warn!(%error, partitions = tps.len(), retry_in = ?self.backoff, "transaction aborted; its partitions were rewound to their committed offsets and run again");
        }
        self.not_before = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }

    /// The fatal source error for `reason`, logged.
    fn stopped(&self, reason: &str) -> SourceError {
        tracing::error!(transactional_id = %self.settings.transactional_id, %reason, "the transactional producer cannot go on; the source stops");
        SourceError::Fatal(
            format!(
                "the Kafka transactional producer {:?} cannot go on ({reason}); \
                 if another instance runs with its transactional id, this one was replaced",
                self.settings.transactional_id
            )
            .into(),
        )
    }

    fn count(&self, result: &'static str) {
        metrics::counter!(TRANSACTIONS, "group" => self.group.clone(), "result" => result)
            .increment(1);
    }
}
