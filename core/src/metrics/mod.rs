//! Metrics and tracing: counts by outcome, handler duration, in-flight gauge,
//! and a span per message carrying its id (`backstop.message`, at `debug`:
//! enable it with `RUST_LOG=info,backstop::metrics=debug` to see a message's
//! id on every line logged while it runs; with the feature `otel`, an
//! OpenTelemetry consumer span in the message's trace at `info`: see
//! the `otel` module). Each step of a message is a `debug` event of its
//! own: see [`lifecycle`](crate::lifecycle).
//!
//! Through the [`metrics`] facade; install any recorder (Prometheus, …).
//!
//! Every metric carries the `source` and `group` labels of its consumer
//! ([`MetricLabels`]; set with [`StackBuilder::metric_labels`](crate::stack::StackBuilder::metric_labels)
//! and [`Runner::metric_labels`](crate::runner::Runner::metric_labels)).
//!
//! | name | kind | more labels |
//! |---|---|---|
//! | `backstop_messages_total` | counter | `outcome`: handled, dead_lettered, deferred, duplicate, nacked |
//! | `backstop_handler_duration_seconds` | histogram, seconds | `outcome` |
//! | `backstop_in_flight` | gauge, messages | |
//! | `backstop_digest_id_merges_total` | counter | |
//! | `backstop_breaker_state` | gauge | (0 closed, 1 half-open, 2 open, 3 paused; see [`breaker`](crate::breaker)) |
//! | `backstop_runner_halted` | gauge | (set by the [`Runner`](crate::runner::Runner), see [`HALTED`](crate::runner::HALTED)) |
//! | `backstop_ready` | gauge | 1 while the runner is ready ([`Readiness`](crate::runner::Readiness)), else 0 |
//! | `backstop_store_duration_seconds` | histogram, seconds | `op`: the [`Store`](crate::idempotency::Store) method (claim, renew, complete, mark_dead_lettered, release, release_with_letter, layout, claim_many, renew_many, complete_many) |
//! | `backstop_store_errors_total` | counter | `op` (a batch counts each failed item) |
//! | `backstop_kafka_lag_records` | gauge | `source`, `group`, `topic`, `partition` |
//! | `backstop_kafka_oldest_unfinished_seconds` | gauge | `source`, `group`, `topic`, `partition` |
//! | `backstop_queue_depth` | gauge | `source`, `group`, `queue` |
//! | `backstop_dlq_depth` | gauge | `source`, `group`, `dlq` |
//! | `backstop_retry_depth` | gauge | `source`, `group`, `tier` |
//! | `backstop_ack_failures_total` | counter | `source`, `group` |
//! | `backstop_commit_failures_total` | counter | `source`, `group` |
//! | `backstop_reconnects_total` | counter | `source`, `group` |
//! | `backstop_rabbitmq_ack_frames_total` | counter | `source`, `group`, `multiple` (`true` for a coalesced frame) |
//! | `backstop_rabbitmq_acks_coalesced_total` | counter | `source`, `group` |
//! | `backstop_kafka_transactions_total` | counter | `group`, `result` (`committed`, `aborted`, `stuck`; exactly-once mode) |
//! | `backstop_kafka_parked_total` | counter | `group`, `event` (`head`, `follower`, `released`, `ended`, `unparked`, `too_large`; ordered retries) |
//! | `backstop_kafka_parked_keys`, `backstop_kafka_parked_copies`, `backstop_kafka_parked_loading` | gauge | `group` (ordered retries: keys parked, copies not run yet, partitions loading) |
//!
//! **Operations metrics.** The store's are recorded where the idempotency
//! layer calls the store (through one set of keys per stack, labelled with
//! the stack's [`MetricLabels`]; [`Measured`](crate::idempotency::Measured)
//! for the background calls), so every store has them. The others are the adapters', labelled from
//! their own configuration: `source` and `group` are the queue's name on
//! RabbitMQ, the main topics joined with `,` and the consumer group on
//! Kafka. Nothing of them is recorded per message except the store's
//! (static keys, as the outcome counters):
//!
//! - `backstop_kafka_lag_records`: the partition's high watermark less its
//!   first unfinished offset (received records still held, queued or
//!   running count until they finish), set by the poll thread every
//!   `KafkaConfig::metrics_interval` (5 s) from librdkafka's statistics;
//!   `backstop_kafka_oldest_unfinished_seconds`: how long the partition's
//!   first unfinished message has been its first unfinished message (seen
//!   at each report, so up to one interval short; 0 when none). Both go to
//!   0 when the partition is revoked.
//! - `backstop_queue_depth`, `backstop_dlq_depth`, `backstop_retry_depth`
//!   on RabbitMQ: ready messages of the source queue, `<queue>.dlq` and each
//!   `<queue>.retry.<tier>`, by a passive declare on a channel of the
//!   depth poller's own, every 15 s (`RabbitSource::depth_interval`).
//! - `backstop_dlq_depth` on Kafka: the DLQ topic's records less the
//!   records of its state topic, where `backstop dlq` marks each letter it
//!   replayed or purged (exact unless a letter was written or marked twice;
//!   see `backstop_kafka`'s `depth` module); `backstop_retry_depth`: the lag
//!   of the tier's retry topics over the partitions the member holds.
//! - `backstop_ack_failures_total`: RabbitMQ ack and nack frames that did
//!   not reach the broker (the message is redelivered);
//!   `backstop_commit_failures_total`: Kafka offset stores and commits that
//!   failed (finished messages may be redelivered);
//!   `backstop_reconnects_total`: a RabbitMQ consumer that subscribed again
//!   after losing its connection, a Kafka consumer whose messages flow
//!   again after every broker was lost.
//! - `backstop_rabbitmq_ack_frames_total`: the ack frames a RabbitMQ
//!   consumer's ack window sent, `multiple="true"` for a coalesced one;
//!   `backstop_rabbitmq_acks_coalesced_total`: the deliveries those
//!   `multiple` frames acked (divided by them: the average coalescing).
//!
//! `backstop_digest_id_merges_total` counts messages without a message id
//! or a payload key, identified by a digest of their content
//! ([`IdSource::Digest`](crate::message::IdSource::Digest)), that arrived as a first
//! delivery (not a redelivery) and were acked as a duplicate: an identical
//! message was seen before, either the producer's republish of the same
//! message or a second, legitimately identical one merged with the first
//! (see [`inbound`](crate::inbound)).

mod handle;
mod keys;
mod labels;
mod layer;
mod observation;
mod ops;
#[cfg(test)]
mod tests;

pub(crate) use self::handle::Handle;
pub(crate) use self::keys::{METADATA, MessageKeys};
pub use self::labels::MetricLabels;
pub use self::layer::MetricsLayer;
pub(crate) use self::observation::Observation;
pub use self::ops::{
    ACK_FAILURES, COMMIT_FAILURES, DLQ_DEPTH, KAFKA_LAG, KAFKA_OLDEST_UNFINISHED, QUEUE_DEPTH,
    RECONNECTS, RETRY_DEPTH, STORE_BATCH_SIZE, STORE_DURATION, STORE_ERRORS, consumer_labels,
};

use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::Service;

use crate::error::Error;
use crate::outcome::Outcome;
use crate::request::Request;

/// Counts messages by outcome.
pub const MESSAGES_TOTAL: &str = "backstop_messages_total";
/// Time spent in the stack below this layer per message.
pub const HANDLER_DURATION: &str = "backstop_handler_duration_seconds";
/// Messages in the stack right now.
pub const IN_FLIGHT: &str = "backstop_in_flight";
/// First deliveries of id-less, key-less messages acked as duplicates of an identical one.
pub const DIGEST_ID_MERGES: &str = "backstop_digest_id_merges_total";
/// 1 while a runner is ready (consuming), else 0.
pub const READY: &str = "backstop_ready";

/// Describes backstop's metrics to the installed recorder (once per process).
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(MESSAGES_TOTAL, "Messages settled, by outcome");
        metrics::describe_histogram!(
            HANDLER_DURATION,
            metrics::Unit::Seconds,
            "Time a message spent in the stack"
        );
        metrics::describe_gauge!(IN_FLIGHT, metrics::Unit::Count, "Messages being processed");
        metrics::describe_gauge!(
            READY,
            "1 while the runner is ready (connected, consuming, not paused by the breaker), else 0"
        );
        metrics::describe_gauge!(
            crate::runner::HALTED,
            "1 while a runner is halted because a dead letter can never be written"
        );
        metrics::describe_gauge!(
            crate::breaker::BREAKER_STATE,
            "The runner's kill switch: 0 closed, 1 half-open, 2 open, 3 paused"
        );
        metrics::describe_counter!(
            DIGEST_ID_MERGES,
            "First deliveries of id-less, key-less messages acked as duplicates of an identical message"
        );
        ops::describe();
    });
}

/// The label of a result: its outcome, or `nacked` for an error.
pub fn label(result: &Result<Outcome, Error>) -> &'static str {
    match result {
        Ok(outcome) => outcome.label(),
        Err(_) => "nacked",
    }
}

/// The metrics-and-tracing service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    keys: Arc<MessageKeys>,
}

impl<S> Metrics<S> {
    /// Wraps `inner`; its metrics carry empty `source` and `group` labels.
    pub fn new(inner: S) -> Self {
        Self::labelled(inner, &MetricLabels::default())
    }

    /// Wraps `inner`; its metrics carry `labels`.
    pub fn labelled(inner: S, labels: &MetricLabels) -> Self {
        describe();
        Metrics {
            inner,
            keys: Arc::new(MessageKeys::new(labels)),
        }
    }
}

impl<S, T> Service<Request<T>> for Metrics<S>
where
    S: Service<Request<T>, Response = Outcome, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let observation = Observation::start(&request, Arc::clone(&self.keys));
        let future = {
            let _entered = observation.span.enter();
            self.inner.call(request)
        };
        Box::pin(observation.observe(move || future))
    }
}
