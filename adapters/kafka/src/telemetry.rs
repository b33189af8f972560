//! A source's operations metrics: its lag per partition, reported on an
//! interval by the poll thread (never per message), and its failure and
//! reconnect counters.
//!
//! `backstop_kafka_lag_records{topic,partition}`: the partition's high
//! watermark less its first unfinished offset (the offset a restart
//! resumes at), so records received and still running count as lag until
//! they finish; with nothing unfinished, less the consumer's fetch
//! position. The high watermark and the position come from librdkafka's
//! statistics (`statistics.interval.ms` set to
//! [`KafkaConfig::metrics_interval`](crate::KafkaConfig::metrics_interval);
//! no request of its own): librdkafka learns the high watermark from its
//! fetches, so while a partition is paused (back-pressure, a paused runner)
//! its lag reads what it was when the pause began.
//!
//! `backstop_kafka_oldest_unfinished_seconds{topic,partition}`: how long
//! the first unfinished message has been the partition's first unfinished
//! message, seen at each report (so up to one interval short), 0 when none.
//!
//! `backstop_retry_depth{tier}`: the lag of the tier's retry topics, over
//! the partitions this member holds (the group's depth is the sum over its
//! members).
//!
//! A revoked partition's gauges are set to 0 and forgotten at once.
//!
//! `backstop_commit_failures_total` counts offset stores and commits that
//! failed; `backstop_reconnects_total` counts the times messages flowed
//! again after the consumer lost every broker (librdkafka reconnects by
//! itself; this is when it worked). Every metric carries `source` (the main
//! topics joined with `,`) and `group`.
//!
//! `backstop_kafka_parked_total{group,event}` counts what ordered retries
//! ([`parking`](crate::parking)) did: `head` (a key parked behind a message
//! gone to a retry tier, or a parked copy gone there in turn), `follower`
//! (a later message of a parked key copied to the parked topic instead of
//! running), `released` (a parked copy ran), `ended` (a head ended: its
//! key's copies may run), `unparked` (a key runs normally again), and
//! `too_large` (a message of a parked key too large to copy ran out of
//! order). On the same interval as the lag, the gauges
//! `backstop_kafka_parked_keys{group}` (keys parked on this member's
//! partitions), `backstop_kafka_parked_copies{group}` (copies read back and
//! not run yet) and `backstop_kafka_parked_loading{group}` (partitions
//! still reading their parked partition: their keyed messages wait).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backstop::metrics::{
    COMMIT_FAILURES, KAFKA_LAG, KAFKA_OLDEST_UNFINISHED, RECONNECTS, RETRY_DEPTH, consumer_labels,
};
use rdkafka::Statistics;

use crate::topic_partition::TopicPartition;

/// Counts one event of ordered retries (see the [module docs](self)).
pub(crate) fn parked(group: &str, event: &'static str) {
    metrics::counter!(PARKED, "group" => group.to_owned(), "event" => event).increment(1);
}

/// Ordered retries' events.
pub(crate) const PARKED: &str = "backstop_kafka_parked_total";

/// Sets the gauges of what ordered retries hold (see the [module docs](self)).
pub(crate) fn parked_now(group: &str, now: crate::dispatch::ParkedNow) {
    let gauge = |name: &'static str, value: usize| {
        metrics::gauge!(name, "group" => group.to_owned()).set(value as f64);
    };
    gauge("backstop_kafka_parked_keys", now.keys);
    gauge("backstop_kafka_parked_copies", now.copies);
    gauge("backstop_kafka_parked_loading", now.loading);
}

/// The gauges of one partition, and its first unfinished offset when last seen.
struct Partition {
    lag: metrics::Gauge,
    oldest: metrics::Gauge,
    head: Option<(i64, Instant)>,
    /// The last lag set, if any.
    last: Option<i64>,
}

/// One source's metrics; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct SourceMetrics {
    source: String,
    group: String,
    partitions: Mutex<HashMap<TopicPartition, Partition>>,
    /// Per partition: the high watermark and the fetch position, from the
    /// last statistics.
    offsets: Mutex<HashMap<TopicPartition, (i64, i64)>>,
    /// Retry topic → its tier's index in `tiers`.
    retry_topics: HashMap<String, usize>,
    /// One `backstop_retry_depth{tier}` gauge per tier.
    tiers: Vec<metrics::Gauge>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl SourceMetrics {
    /// The metrics of the source consuming `topics` and `retry_topics`
    /// (each with its tier's name) in `group`.
    pub(crate) fn new(topics: &[&str], retry_topics: &[(String, String)], group: &str) -> Self {
        backstop::metrics::describe();
        let source = topics.join(",");
        let mut names: Vec<&str> = Vec::new();
        let mut tiers = Vec::new();
        let mut by_topic = HashMap::new();
        for (topic, tier) in retry_topics {
            let index = names.iter().position(|n| n == tier).unwrap_or_else(|| {
                names.push(tier);
                let labels = consumer_labels(&source, group, &[("tier", tier)]);
                tiers.push(metrics::gauge!(RETRY_DEPTH, labels));
                names.len() - 1
            });
            by_topic.insert(topic.clone(), index);
        }
        // Exported at 0 from the start, so the first failure is an increase.
        for counter in [COMMIT_FAILURES, RECONNECTS] {
            metrics::counter!(counter, consumer_labels(&source, group, &[])).increment(0);
        }
        SourceMetrics {
            source,
            group: group.to_owned(),
            partitions: Mutex::new(HashMap::new()),
            offsets: Mutex::new(HashMap::new()),
            retry_topics: by_topic,
            tiers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Partition>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps each partition's high watermark and fetch position from
    /// librdkafka's statistics (emitted every `statistics.interval.ms`).
    pub(crate) fn observe(&self, statistics: &Statistics) {
        let mut offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in &statistics.topics {
            for (&partition, stats) in &topic.partitions {
                // -1 is librdkafka's unassigned-partition bucket.
                if partition >= 0 && stats.hi_offset >= 0 {
                    let key = TopicPartition::new(name.as_str(), partition);
                    offsets.insert(key, (stats.hi_offset, stats.next_offset));
                }
            }
        }
    }

    /// Sets the gauges of `heads` (each tracked partition and its first
    /// unfinished offset) from the last statistics.
    pub(crate) fn report(&self, heads: Vec<(TopicPartition, Option<i64>)>) {
        let now = Instant::now();
        let offsets = self
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut partitions = self.lock();
        for (tp, head) in heads {
            let (high, position) = offsets.get(&tp).copied().unzip();
            let gauges = partitions
                .entry(tp.clone())
                .or_insert_with(|| self.gauges(&tp.topic, tp.partition));
            // Nothing unfinished: everything before the fetch position is done.
            let next = head.or(position.filter(|p| *p >= 0));
            if let (Some(next), Some(high)) = (next, high) {
                let lag = (high - next).max(0);
                gauges.lag.set(lag as f64);
                gauges.last = Some(lag);
            }
            let age = match (head, gauges.head) {
                (Some(offset), Some((seen, since))) if seen == offset => now - since,
                (Some(offset), _) => {
                    gauges.head = Some((offset, now));
                    Duration::ZERO
                }
                (None, _) => {
                    gauges.head = None;
                    Duration::ZERO
                }
            };
            gauges.oldest.set(age.as_secs_f64());
        }
        // A tier's depth: the lag of its retry topics' partitions this member holds.
        let mut depths = vec![0i64; self.tiers.len()];
        for (TopicPartition { topic, .. }, partition) in partitions.iter() {
            if let (Some(&tier), Some(lag)) = (self.retry_topics.get(&**topic), partition.last) {
                depths[tier] += lag;
            }
        }
        for (gauge, depth) in self.tiers.iter().zip(depths) {
            gauge.set(depth as f64);
        }
    }

    /// Zeroes and forgets the gauges of revoked partitions.
    pub(crate) fn forget<'a>(&self, revoked: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut partitions = self.lock();
        for (topic, partition) in revoked {
            if let Some(gone) = partitions.remove(&TopicPartition::new(topic, partition)) {
                gone.lag.set(0.0);
                gone.oldest.set(0.0);
            }
        }
    }

    /// Counts one failed offset store or commit.
    pub(crate) fn commit_failed(&self) {
        metrics::counter!(
            COMMIT_FAILURES,
            consumer_labels(&self.source, &self.group, &[])
        )
        .increment(1);
    }

    /// Counts one reconnect: messages flow again after every broker was lost.
    pub(crate) fn reconnected(&self) {
        metrics::counter!(RECONNECTS, consumer_labels(&self.source, &self.group, &[])).increment(1);
    }

    fn gauges(&self, topic: &str, partition: i32) -> Partition {
        let partition = partition.to_string();
        let labels = consumer_labels(
            &self.source,
            &self.group,
            &[("topic", topic), ("partition", &partition)],
        );
        Partition {
            lag: metrics::gauge!(KAFKA_LAG, labels.clone()),
            oldest: metrics::gauge!(KAFKA_OLDEST_UNFINISHED, labels),
            head: None,
            last: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;

    /// The gauges named `name` with a `label` value each, from one snapshot
    /// (taking a snapshot zeroes the recorder's gauges).
    fn read(snapshotter: &Snapshotter, wanted: &[(&str, (&str, &str))]) -> Vec<Option<f64>> {
        let snapshot = snapshotter.snapshot().into_vec();
        wanted
            .iter()
            .map(|(name, (key, value))| {
                snapshot
                    .iter()
                    .find(|(k, _, _, _)| {
                        k.key().name() == *name
                            && k.key()
                                .labels()
                                .any(|l| l.key() == *key && l.value() == *value)
                    })
                    .and_then(|(_, _, _, v)| match v {
                        DebugValue::Gauge(g) => Some(g.into_inner()),
                        _ => None,
                    })
            })
            .collect()
    }

    #[test]
    fn lag_runs_from_the_first_unfinished_offset_and_a_revoke_zeroes_it() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let tp = TopicPartition::new("orders", 0);
        let retry = TopicPartition::new("orders.g.retry.5s", 0);
        let tiers = [("orders.g.retry.5s".to_owned(), "5s".to_owned())];
        let wanted = [
            (KAFKA_LAG, ("topic", "orders")),
            (RETRY_DEPTH, ("tier", "5s")),
        ];
        metrics::with_local_recorder(&recorder, || {
            let metrics = SourceMetrics::new(&["orders"], &tiers, "g");
            {
                let mut offsets = metrics.offsets.lock().unwrap();
                offsets.insert(tp.clone(), (100, 90));
                offsets.insert(retry.clone(), (7, 7));
            }
            // Offset 80 still runs: 20 records unfinished; the retry topic
            // holds 3 unfinished copies.
            metrics.report(vec![(tp.clone(), Some(80)), (retry.clone(), Some(4))]);
            assert_eq!(read(&snapshotter, &wanted), [Some(20.0), Some(3.0)]);
            // Nothing unfinished: lag from the fetch position.
            metrics.report(vec![(tp.clone(), None)]);
            assert_eq!(read(&snapshotter, &wanted), [Some(10.0), Some(3.0)]);
            // A revoke zeroes the partition's gauges at once.
            metrics.report(vec![(tp.clone(), None)]);
            metrics.forget([("orders", 0)]);
            assert_eq!(read(&snapshotter, &wanted)[0], Some(0.0));
            assert!(metrics.lock().is_empty() || !metrics.lock().contains_key(&tp));
        });
    }
}
