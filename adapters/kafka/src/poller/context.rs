//! The consumer's context ([`GroupContext`]): librdkafka's logging and
//! statistics, and the rebalance callbacks that run inside `poll` on the
//! poll thread: on revoke, fence the partitions and store (or, exactly
//! once, commit) what is done; on assign, track the new partitions.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::dispatch::Dispatcher;
use crate::link::Link;
use crate::source::RetryTable;
use crate::telemetry::SourceMetrics;
use crate::topic_partition::TopicPartition;
use crate::transaction::Transactor;

/// The consumer's context: rebalance callbacks and logging.
#[derive(Debug)]
pub(crate) struct GroupContext {
    dispatcher: Arc<Dispatcher>,
    delayed: Arc<RetryTable>,
    link: Arc<Link>,
    metrics: Arc<SourceMetrics>,
    /// Exactly-once mode: the transactional producer (used on the poll
    /// thread only: here inside the revoke callback, and by the loop).
    transactor: Option<SharedTransactor>,
}

/// The transactional producer, shared by the poll loop and the rebalance
/// callback (both on the poll thread, so the lock is never contended).
pub(crate) type SharedTransactor = Arc<std::sync::Mutex<Transactor>>;

pub(super) fn locked(transactor: &SharedTransactor) -> std::sync::MutexGuard<'_, Transactor> {
    transactor.lock().unwrap_or_else(|e| e.into_inner())
}

impl GroupContext {
    pub(crate) fn new(
        dispatcher: Arc<Dispatcher>,
        delayed: Arc<RetryTable>,
        link: Arc<Link>,
        metrics: Arc<SourceMetrics>,
        transactor: Option<SharedTransactor>,
    ) -> Self {
        GroupContext {
            dispatcher,
            delayed,
            link,
            metrics,
            transactor,
        }
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{log_message}"),
            L::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "consumer: {reason}");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.observe(&statistics);
    }
}

/// The offsets as a partition list.
pub(crate) fn list(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (TopicPartition { topic, partition }, offset) in offsets {
        // Only fails for an invalid offset, and watermarks are valid offsets.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// The partitions of a rebalance, for its log line: `topic[0,1];other[3]`
/// (no spaces: one value for a `key=value` reader), the first
/// [`Listed::MOST`] partitions and a count of the rest (a group
/// stalled with partitions nobody owns is diagnosed from these lines).
struct Listed<'a>(&'a [rdkafka::topic_partition_list::TopicPartitionListElem<'a>]);

impl Listed<'_> {
    const MOST: usize = 64;
}

impl std::fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut topic: Option<&str> = None;
        for element in self.0.iter().take(Self::MOST) {
            if topic == Some(element.topic()) {
                write!(f, ",{}", element.partition())?;
            } else {
                if topic.is_some() {
                    f.write_str("];")?;
                }
                write!(f, "{}[{}", element.topic(), element.partition())?;
                topic = Some(element.topic());
            }
        }
        if topic.is_some() {
            f.write_str("]")?;
        }
        let rest = self.0.len().saturating_sub(Self::MOST);
        if rest > 0 {
            write!(f, ";+{rest}")?;
        }
        Ok(())
    }
}

/// The partitions as a partition list.
pub(crate) fn partitions(tps: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(tps.len());
    for TopicPartition { topic, partition } in tps {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let elements = revoked.elements();
        // Exactly-once: what is done is committed before the partitions go
        // (an abort rewinds them first; the next owner reads them again).
        if let Some(transactor) = &self.transactor
            && !consumer.assignment_lost()
            && let Err(error) = locked(transactor).commit(consumer, &self.dispatcher)
        {
            self.dispatcher.report(error);
        }
        let commit = self
            .dispatcher
            .revoke(elements.iter().map(|e| (e.topic(), e.partition())));
        self.metrics
            .forget(elements.iter().map(|e| (e.topic(), e.partition())));
        let lost = consumer.assignment_lost();
        tracing::info!(
            partitions = elements.len(),
            committing = commit.len(),
            lost,
            revoked = %Listed(&elements),
            "partitions revoked"
        );
        if commit.is_empty() || lost || self.transactor.is_some() {
            return;
        }
        // Store, not commit: with auto commit, librdkafka commits the stored
        // offsets of unassigned partitions itself and holds the rebalance
        // until that commit is done. A sync commit here would block the poll
        // thread for up to `socket.timeout.ms` when the coordinator is away
        // (a broker restart), and the member could not rejoin meanwhile.
        if let Err(error) = consumer.store_offsets(&list(&commit)) {
            self.metrics.commit_failed();
            tracing::warn!(%error, "storing offsets on revoke failed; the new owner may redeliver finished messages");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        let elements = assigned.elements();
        self.dispatcher.assign(elements.iter().map(|e| {
            let tp = TopicPartition::new(e.topic(), e.partition());
            (tp, self.delayed.contains_key(e.topic()))
        }));
        // A partition paused under an earlier assignment must not stay paused.
        if let Err(error) = consumer.resume(assigned) {
            tracing::debug!(%error, "resume of newly assigned partitions failed");
        }
        // Joined: an empty assignment (more members than partitions) is ready too.
        self.link.joined();
        // With cooperative rebalancing an assignment adds to what is owned
        // (often nothing, after a revoke); an eager one is all that is
        // owned: say both.
        let owned = consumer.assignment().map_or(0, |a| a.count());
        tracing::info!(
            partitions = elements.len(),
            owned,
            assigned = %Listed(&elements),
            "partitions assigned"
        );
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.commit_failed();
                tracing::debug!(%error, "offset commit failed; it is retried on the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(tps: &[(&str, i32)]) -> String {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in tps {
            tpl.add_partition(topic, *partition);
        }
        Listed(&tpl.elements()).to_string()
    }

    #[test]
    fn a_rebalance_lists_its_partitions_by_topic_and_counts_the_rest() {
        assert_eq!(listed(&[]), "");
        assert_eq!(
            listed(&[("orders", 0), ("orders", 2), ("orders.retry", 1)]),
            "orders[0,2];orders.retry[1]"
        );
        let many: Vec<(&str, i32)> = (0..70).map(|p| ("t", p)).collect();
        let shown = listed(&many);
        assert!(shown.starts_with("t[0,1,2,"), "{shown}");
        assert!(shown.ends_with(",63];+6"), "{shown}");
    }
}
