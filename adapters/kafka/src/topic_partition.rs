//! [`TopicPartition`]: the name of one partition of one topic, the key of
//! everything the consumer keeps per partition.

use std::sync::Arc;

/// A topic and one of its partitions (ordered by topic, then partition).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    /// The topic's name (shared: every message of the partition names it).
    pub(crate) topic: Arc<str>,
    /// The partition's number.
    pub(crate) partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub(crate) fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}
