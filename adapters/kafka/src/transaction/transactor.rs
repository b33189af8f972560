//! [`Transactor`]: the transactional producer, committing on the poll
//! thread (see the [module docs](super)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::SourceError;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::{ExactlyOnce, Pending};
use crate::dispatch::{Dispatcher, Tp};
use crate::poller::{list, partitions};
use crate::{Error, KafkaConfig, record};

/// Transactions counted by result.
const TRANSACTIONS: &str = "backstop_kafka_transactions_total";
/// The longest wait after consecutive aborts before trying again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    producer: BaseProducer,
    pending: Arc<Pending>,
    settings: ExactlyOnce,
    group: String,
    last: Instant,
    /// After an abort, no commit is tried before this.
    not_before: Option<Instant>,
    backoff: Duration,
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
        let producer: BaseProducer = config
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
        })
    }

    /// Registers the `transactional.id` with its coordinator, which aborts
    /// a predecessor's open transaction and fences it.
    pub(crate) fn init(&self) -> Result<(), SourceError> {
        self.producer
            .init_transactions(self.settings.call_timeout)
            .map_err(|error| {
                SourceError::Fatal(
                    format!(
                        "the transactional producer {:?} could not start (init_transactions): {error}",
                        self.settings.transactional_id
                    )
                    .into(),
                )
            })
    }

    /// True when a commit is due: `settled` messages were settled since the
    /// last one, and the interval passed or there are enough of them.
    pub(crate) fn due(&self, settled: usize) -> bool {
        let now = Instant::now();
        settled > 0
            && self.not_before.is_none_or(|t| now >= t)
            && (settled >= self.settings.commit_every
                || now - self.last >= self.settings.commit_interval)
    }

    /// Commits every partition's watermark with what the deliveries below
    /// it produced, then has their marks written; rewinds on an abort. A
    /// fenced producer is a fatal error (this instance was replaced).
    pub(crate) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        dispatcher: &Dispatcher,
    ) -> Result<Committed, SourceError> {
        self.last = Instant::now();
        let offsets = dispatcher.to_commit();
        dispatcher.reset_settled();
        if offsets.is_empty() {
            return Ok(Committed::Nothing);
        }
        let covered = self.pending.take_covered(&offsets);
        let records = covered.records.len();
        match self.run(consumer, &offsets, covered.records) {
            Ok(()) => {
                dispatcher.mark_committed(&offsets);
                for marks in covered.marks {
                    marks.write_in_background();
                }
                self.not_before = None;
                self.backoff = self.settings.commit_interval;
                self.count("committed");
                Ok(Committed::Records(records))
            }
            Err(error) => {
                // Dropped unwritten: the leases are released, not counted.
                drop(covered.marks);
                self.count("aborted");
                self.abort(consumer, dispatcher, &offsets, &error)?;
                Ok(Committed::Aborted)
            }
        }
    }

    fn run<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &[(Tp, i64)],
        records: Vec<(String, backstop::Message)>,
    ) -> Result<(), KafkaError> {
        let timeout = self.settings.call_timeout;
        let metadata = consumer
            .group_metadata()
            // Not a member (yet, or any more): nothing may be committed.
            .ok_or(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::UnknownMemberId,
            ))?;
        self.producer.begin_transaction()?;
        for (destination, message) in &records {
            self.send(destination, message)?;
        }
        self.producer
            .send_offsets_to_transaction(&list(offsets), &metadata, timeout)?;
        match self.producer.commit_transaction(timeout) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                self.producer.commit_transaction(timeout)
            }
            other => other,
        }
    }

    /// Queues one record of the open transaction, waiting for room in the
    /// producer's queue (bounded by the call timeout).
    fn send(&self, destination: &str, message: &backstop::Message) -> Result<(), KafkaError> {
        let started = Instant::now();
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(destination)
                .payload(&message.payload[..])
                .headers(record::record_headers(message));
            if let Some(key) = &message.key {
                record = record.key(&key[..]);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if started.elapsed() < self.settings.call_timeout =>
                {
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Aborts the open transaction and rewinds its partitions; fatal when
    /// the producer was fenced or failed for good.
    fn abort<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        dispatcher: &Dispatcher,
        offsets: &[(Tp, i64)],
        error: &KafkaError,
    ) -> Result<(), SourceError> {
        if let Some(reason) = self.fatal(error) {
            tracing::error!(transactional_id = %self.settings.transactional_id, %reason, "the transactional producer failed for good; the source stops");
            return Err(SourceError::Fatal(
                format!(
                    "the Kafka transactional producer {:?} cannot go on ({reason}); \
                     if another instance runs with its transactional id, this one was replaced",
                    self.settings.transactional_id
                )
                .into(),
            ));
        }
        if let Err(abort) = self.producer.abort_transaction(self.settings.call_timeout) {
            tracing::debug!(%abort, "abort_transaction failed (no transaction was open, or the broker aborts it by its timeout)");
            if let Some(reason) = self.fatal(&abort) {
                return Err(SourceError::Fatal(
                    format!("the Kafka transactional producer cannot go on ({reason})").into(),
                ));
            }
        }
        let tps: Vec<Tp> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
        let rewound = dispatcher.rewind(&tps);
        for (tp, offset) in &rewound {
            self.pending.forget(tp);
            if let Err(seek) =
                consumer.seek(&tp.0, tp.1, Offset::Offset(*offset), Duration::from_secs(5))
            {
                tracing::warn!(%seek, topic = %tp.0, partition = tp.1, offset, "seeking back after an abort failed; the partition's next owner reads from its committed offset");
            }
        }
        if let Err(resume) = consumer.resume(&partitions(&tps)) {
            tracing::debug!(%resume, "resuming rewound partitions failed");
        }
        tracing::warn!(%error, partitions = tps.len(), retry_in = ?self.backoff, "transaction aborted; its partitions were rewound to their committed offsets and run again");
        self.not_before = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }

    /// The reason the producer cannot go on, if it cannot (fenced, or a
    /// fatal error).
    fn fatal(&self, error: &KafkaError) -> Option<String> {
        if let Some((code, text)) = self.producer.client().fatal_error() {
            return Some(format!("{code}: {text}"));
        }
        match error {
            KafkaError::Transaction(e) if e.is_fatal() => Some(e.to_string()),
            _ => None,
        }
    }

    fn count(&self, result: &'static str) {
        metrics::counter!(TRANSACTIONS, "group" => self.group.clone(), "result" => result)
            .increment(1);
    }
}
