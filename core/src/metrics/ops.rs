//! The names of the operations metrics: what a broker, a store and a
//! consumer's connection look like from outside the stack.
//!
//! The store's metrics are recorded by the idempotency layer (see
//! [`Measured`](crate::idempotency::Measured)); the others by the adapters,
//! each from its own configuration. Every one carries the labels `source`
//! and `group` (RabbitMQ: both the queue's name; Kafka: the topics joined
//! with `,`, and the consumer group id), except the store's, which the
//! stack records before it knows them.

/// Kafka: records of a partition not finished yet (the high watermark less
/// the first unfinished offset). Labels `topic`, `partition`.
pub const KAFKA_LAG: &str = "backstop_kafka_lag_records";
/// Kafka: how long the oldest received and unfinished message of a
/// partition has been held, in seconds (0 when none). Labels `topic`, `partition`.
pub const KAFKA_OLDEST_UNFINISHED: &str = "backstop_kafka_oldest_unfinished_seconds";
/// RabbitMQ: ready messages in the source queue. Label `queue`.
pub const QUEUE_DEPTH: &str = "backstop_queue_depth";
/// Letters waiting in a DLQ (RabbitMQ: ready letters; Kafka: letters not
/// yet redriven or purged). Label `dlq`.
pub const DLQ_DEPTH: &str = "backstop_dlq_depth";
/// Messages waiting in a retry tier. Label `tier`.
pub const RETRY_DEPTH: &str = "backstop_retry_depth";
/// Time one idempotency store call took. Label `op`.
pub const STORE_DURATION: &str = "backstop_store_duration_seconds";
/// Idempotency store calls that failed. Label `op`.
pub const STORE_ERRORS: &str = "backstop_store_errors_total";
/// Calls one batched round trip to the idempotency store carried
/// ([`Batched`](crate::idempotency::Batched)). Label `op` (`claim_many`,
/// `complete_many`).
pub const STORE_BATCH_SIZE: &str = "backstop_store_batch_size";
/// RabbitMQ: ack and nack frames that did not reach the broker.
pub const ACK_FAILURES: &str = "backstop_ack_failures_total";
/// Kafka: offset stores and commits that failed.
pub const COMMIT_FAILURES: &str = "backstop_commit_failures_total";
/// Successful reconnects of a source after it lost its broker.
pub const RECONNECTS: &str = "backstop_reconnects_total";

/// Describes the operations metrics to the installed recorder.
pub(super) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        KAFKA_LAG,
        Unit::Count,
        "Records of a partition not finished yet (high watermark less the first unfinished offset)"
    );
    describe_gauge!(
        KAFKA_OLDEST_UNFINISHED,
        Unit::Seconds,
        "Age of the oldest received and unfinished message of a partition"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Ready messages in the source queue"
    );
    describe_gauge!(
        DLQ_DEPTH,
        Unit::Count,
        "Letters waiting in the DLQ (Kafka: not yet redriven or purged)"
    );
    describe_gauge!(RETRY_DEPTH, Unit::Count, "Messages waiting in a retry tier");
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "Time one idempotency store call took"
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Idempotency store calls that failed"
    );
    describe_histogram!(
        STORE_BATCH_SIZE,
        Unit::Count,
        "Calls one batched round trip to the idempotency store carried"
    );
    describe_counter!(
        ACK_FAILURES,
        Unit::Count,
        "Ack and nack frames that did not reach the broker"
    );
    describe_counter!(
        COMMIT_FAILURES,
        Unit::Count,
        "Kafka offset stores and commits that failed"
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Successful reconnects of a source after it lost its broker"
    );
}

/// The labels every consumer's metric carries: `source` and `group`
/// (RabbitMQ: both the queue's name; Kafka: the topics joined with `,`, and
/// the consumer group id), then `extra`.
/// Build them once, when a poller or a handle starts, never per message.
pub fn consumer_labels(
    source: &str,
    group: &str,
    extra: &[(&'static str, &str)],
) -> Vec<metrics::Label> {
    let mut labels = Vec::with_capacity(2 + extra.len());
    labels.push(metrics::Label::new("source", source.to_owned()));
    labels.push(metrics::Label::new("group", group.to_owned()));
    labels.extend(
        extra
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, (*value).to_owned())),
    );
    labels
}
