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
//! ([`MetricLabels`]; set with [`StackBuilder::metric_labels`](crate::StackBuilder::metric_labels)
//! and [`Runner::metric_labels`](crate::Runner::metric_labels)).
//!
//! | name | kind | more labels |
//! |---|---|---|
//! | `backstop_messages_total` | counter | `outcome`: handled, dead_lettered, deferred, duplicate, nacked |
//! | `backstop_handler_duration_seconds` | histogram, seconds | `outcome` |
//! | `backstop_in_flight` | gauge, messages | |
//! | `backstop_digest_id_merges_total` | counter | |
//! | `backstop_breaker_state` | gauge | (0 closed, 1 half-open, 2 open, 3 paused; see [`breaker`](crate::breaker)) |
//! | `backstop_runner_halted` | gauge | (set by the [`Runner`](crate::Runner), see [`HALTED`](crate::runner::HALTED)) |
//! | `backstop_ready` | gauge | 1 while the runner is ready ([`Readiness`](crate::Readiness)), else 0 |
//! | `backstop_store_duration_seconds` | histogram, seconds | `op`: the [`Store`](crate::Store) method (claim, renew, complete, dead_letter, release, defer_letter, layout, claim_many, renew_many, complete_many) |
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
//! ([`IdSource::Digest`](crate::IdSource::Digest)), that arrived as a first
//! delivery (not a redelivery) and were acked as a duplicate: an identical
//! message was seen before, either the producer's republish of the same
//! message or a second, legitimately identical one merged with the first
//! (see [`inbound`](crate::inbound)).

mod keys;
mod labels;
mod layer;
mod ops;

pub(crate) use self::keys::{METADATA, MessageKeys};
pub use self::labels::MetricLabels;
pub use self::layer::MetricsLayer;
pub use self::ops::{
    ACK_FAILURES, COMMIT_FAILURES, DLQ_DEPTH, KAFKA_LAG, KAFKA_OLDEST_UNFINISHED, QUEUE_DEPTH,
    RECONNECTS, RETRY_DEPTH, STORE_BATCH_SIZE, STORE_DURATION, STORE_ERRORS, consumer_labels,
};

use std::ops::Deref;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::Service;
use tracing::Instrument;

use crate::{Error, Outcome, Request};

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

/// Counts a message in flight until it leaves (or is dropped).
struct InFlight<K: Deref<Target = MessageKeys>>(Option<K>);

impl<K: Deref<Target = MessageKeys>> InFlight<K> {
    fn enter(keys: K) -> Self {
        keys.in_flight(1.0);
        InFlight(Some(keys))
    }

    /// No longer in flight; the keys, to record the outcome with.
    fn leave(mut self) -> Option<K> {
        let keys = self.0.take();
        if let Some(keys) = &keys {
            keys.in_flight(-1.0);
        }
        keys
    }
}

impl<K: Deref<Target = MessageKeys>> Drop for InFlight<K> {
    fn drop(&mut self) {
        if let Some(keys) = &self.0 {
            keys.in_flight(-1.0);
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

/// One message's metrics and span; shared by [`Metrics`] and the stack's
/// pipeline.
pub(crate) struct Observation<K> {
    span: tracing::Span,
    may_merge: bool,
    keys: K,
}

impl<K: Deref<Target = MessageKeys>> Observation<K> {
    /// Starts observing `request`: its span (`backstop.message`, a no-op
    /// without a subscriber that wants it).
    pub(crate) fn start<T>(request: &Request<T>, keys: K) -> Self {
        let meta = &request.message().meta;
        // At debug: an info subscriber would pay about 12,000 instructions
        // and 2 allocations per message for it (the instruction bench's
        // BENCH-INSTR-LIFECYCLE line).
        #[cfg(not(feature = "otel"))]
        let span = tracing::debug_span!(
            "backstop.message",
            message_id = %meta.message_id,
            source = %meta.source,
            attempt = request.attempt(),
            outcome = tracing::field::Empty,
        );
        // The same span as a consumer span, a child of the message's trace.
        #[cfg(feature = "otel")]
        let span = crate::otel::consumer_span(request);
        let may_merge = meta.id_source == crate::IdSource::Digest
            && !meta.redelivered
            && request.payload_key().is_none();
        Observation {
            span,
            may_merge,
            keys,
        }
    }

    /// Runs `run` inside the span, counting it in flight, then records
    /// its outcome and duration. (`run` makes the future here, so it is
    /// stored once, inside this one.)
    ///
    /// Not an `async fn`: the future it returns is the instrumented block
    /// itself, with no wrapper holding `run` a second time.
    pub(crate) fn observe<Fut>(
        self,
        run: impl FnOnce() -> Fut,
    ) -> tracing::instrument::Instrumented<impl std::future::Future<Output = Result<Outcome, Error>>>
    where
        Fut: std::future::Future<Output = Result<Outcome, Error>>,
    {
        let Observation {
            span,
            may_merge,
            keys,
        } = self;
        let record = span.clone();
        async move {
            let in_flight = InFlight::enter(keys);
            let start = std::time::Instant::now();
            let result = run().await;
            let keys = in_flight.leave();
            let label = label(&result);
            record.record("outcome", label);
            if let Some(keys) = keys {
                keys.of(&result).record(start.elapsed().as_secs_f64());
            }
            if may_merge && matches!(result, Ok(Outcome::Duplicate)) {
                metrics::counter!(DIGEST_ID_MERGES).increment(1);
                tracing::info!("an id-less message was acked as a duplicate of an identical one");
            }
            if let Err(error) = &result {
                tracing::info!(%error, "message not settled, it will be redelivered");
            }
            result
        }
        .instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::testing::request;

    type Snapshot = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;

    /// Runs `body` on a current-thread runtime with a debugging recorder of
    /// its own; what it recorded.
    fn recorded(body: impl std::future::Future<Output = ()>) -> Snapshot {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body);
        });
        snapshotter.snapshot().into_vec()
    }

    #[test]
    fn counts_outcomes_and_tracks_in_flight() {
        let snapshot = recorded(async {
            let svc = MetricsLayer::new().layer(service_fn(|r: Request<String>| async move {
                match r.payload() {
                    Ok(p) if p == "ok" => Ok(Outcome::Handled),
                    Ok(p) if p == "dup" => Ok(Outcome::Duplicate),
                    _ => Err(Error::Busy { key: "k".into() }),
                }
            }));
            for body in ["ok", "ok", "dup", "busy"] {
                let _ = svc.clone().oneshot(request(body)).await;
            }
        });
        let count = |outcome: &str| {
            snapshot
                .iter()
                .find(|(k, _, _, _)| {
                    k.key().name() == MESSAGES_TOTAL
                        && k.key().labels().any(|l| l.value() == outcome)
                })
                .map(|(_, _, _, v)| match v {
                    DebugValue::Counter(c) => *c,
                    _ => 0,
                })
                .unwrap_or(0)
        };
        assert_eq!(count("handled"), 2);
        let histogram = snapshot.iter().any(|(k, _, _, v)| {
            k.key().name() == HANDLER_DURATION
                && k.key().labels().any(|l| l.value() == "handled")
                && matches!(v, DebugValue::Histogram(h) if h.len() == 2)
        });
        assert!(
            histogram,
            "the duration is recorded under {HANDLER_DURATION}"
        );
        assert_eq!(count("duplicate"), 1);
        assert_eq!(count("nacked"), 1);
        let gauge = snapshot
            .iter()
            .find(|(k, _, _, _)| k.key().name() == IN_FLIGHT)
            .map(|(_, _, _, v)| v);
        assert!(matches!(gauge, Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0));
    }

    /// A stack and its runner label every series with the consumer's source and group.
    #[test]
    fn a_labelled_stack_and_runner_record_source_and_group() {
        let snapshot = recorded(async {
            let broker = crate::memory::MemoryBroker::new();
            for _ in 0..3 {
                broker
                    .publish_now("orders", crate::Message::new(r#""x""#))
                    .unwrap();
            }
            let source = broker.consume("orders", 2).until_drained();
            let labels = source.metric_labels();
            let stack =
                crate::StackBuilder::<String>::new(std::sync::Arc::new(broker.dead_letter_sink()))
                    .metric_labels(labels.clone())
                    .build(crate::handler_fn(|_: String, _| async {
                        Ok::<_, crate::HandlerError>(())
                    }));
            crate::Runner::new(source, stack)
                .metric_labels(labels)
                .run()
                .await
                .unwrap();
        });
        let labelled = |name: &str| {
            snapshot.iter().find(|(k, _, _, _)| {
                let key = k.key();
                key.name() == name
                    && key
                        .labels()
                        .any(|l| l.key() == "source" && l.value() == "orders")
                    && key
                        .labels()
                        .any(|l| l.key() == "group" && l.value() == "orders")
            })
        };
        assert!(
            matches!(
                labelled(MESSAGES_TOTAL),
                Some((_, _, _, DebugValue::Counter(3)))
            ),
            "{snapshot:?}"
        );
        assert!(labelled(HANDLER_DURATION).is_some());
        assert!(labelled(IN_FLIGHT).is_some());
        assert!(labelled(crate::breaker::BREAKER_STATE).is_some());
        // Drained and stopped: the runner is no longer ready.
        assert!(matches!(
            labelled(READY),
            Some((_, _, _, DebugValue::Gauge(g))) if g.into_inner() == 0.0
        ));
    }

    #[test]
    fn duplicates_of_id_less_first_deliveries_count_as_digest_merges() {
        let snapshot = recorded(async {
            let svc = MetricsLayer::new().layer(service_fn(|_r: Request<String>| async {
                Ok::<_, Error>(Outcome::Duplicate)
            }));
            for redelivered in [false, false, true] {
                let message = crate::inbound::amqp(crate::inbound::AmqpDelivery {
                    queue: "q".into(),
                    redelivered,
                    body: bytes::Bytes::from_static(b"\"same\""),
                    ..crate::inbound::AmqpDelivery::default()
                });
                let request = Request::decode(message, crate::CancellationToken::new(), None);
                let _ = svc.clone().oneshot(request).await;
            }
            // A producer's id is no digest: never counted.
            let _ = svc.clone().oneshot(request("x")).await;
        });
        let merges = snapshot
            .into_iter()
            .find(|(k, _, _, _)| k.key().name() == DIGEST_ID_MERGES)
            .map(|(_, _, _, v)| v);
        assert!(
            matches!(merges, Some(DebugValue::Counter(2))),
            "two first deliveries merged, the redelivery is not a merge: {merges:?}"
        );
    }
}
