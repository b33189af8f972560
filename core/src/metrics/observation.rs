//! [`Observation`]: one message's metrics and span, counted in flight
//! until it settles; shared by the [`Metrics`](super::Metrics) service and
//! the stack's pipeline.

use std::ops::Deref;

use tracing::Instrument;

use super::{DIGEST_ID_MERGES, MessageKeys, label};
use crate::error::Error;
use crate::outcome::Outcome;
use crate::request::Request;

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

/// One message's metrics and span; shared by [`Metrics`](super::Metrics) and the stack's
/// pipeline.
pub(crate) struct Observation<K> {
    pub(super) span: tracing::Span,
    may_merge: bool,
    keys: K,
}

impl<K: Deref<Target = MessageKeys>> Observation<K> {
    /// Starts observing `request`: its span (`backstop.message`, a no-op
    /// without a subscriber that wants it).
    #[inline]
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
        let may_merge = meta.id_source == crate::message::IdSource::Digest
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
