//! The conformance kit: one set of broker scenarios, run against every
//! adapter, so "works on RabbitMQ" and "works on Kafka" mean the same thing.
//!
//! An adapter implements [`Harness`] (fresh queue, source, publisher, DLQ
//! sink) and runs the scenarios with [`conformance_tests!`](crate::conformance_tests).
//! Reads are compared as sets of message ids; a [`Report`] lists both
//! missing and extra ids, and a scenario fails on any missing one.

mod report;
mod scenarios;

pub use self::report::{ConformanceError, Report};
pub use self::scenarios::*;

use std::future::Future;
use std::sync::Arc;

use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::memory::{MemoryBroker, MemorySource};
use backstop::publish::Publisher;
use backstop::runner::Source;

/// What an adapter provides to run the scenarios.
pub trait Harness: Send + Sync + 'static {
    /// The adapter's source.
    type Source: Source;

    /// Creates a new, empty queue or topic with a unique name, and its DLQ.
    fn fresh_queue(&self) -> impl Future<Output = Result<String, BoxError>> + Send;

    /// A consumer of `queue` holding at most `prefetch` unsettled deliveries.
    /// Every call on one queue joins the same consumer group (Kafka).
    fn source(
        &self,
        queue: &str,
        prefetch: usize,
    ) -> impl Future<Output = Result<Self::Source, BoxError>> + Send;

    /// A confirmed publisher.
    fn publisher(&self) -> impl Future<Output = Result<Arc<dyn Publisher>, BoxError>> + Send;

    /// The DLQ writer for messages consumed from `queue`.
    fn dead_letter_sink(
        &self,
        queue: &str,
    ) -> impl Future<Output = Result<Arc<dyn DeadLetterSink>, BoxError>> + Send;

    /// The name of `queue`'s DLQ (readable with [`Harness::source`]).
    fn dlq_name(&self, queue: &str) -> String;
}

/// Generates one `#[tokio::test]` per scenario for a harness expression.
///
/// ```text
/// // tests/conformance.rs of an adapter
/// backstop_testkit::conformance_tests!(MyHarness::connect().await);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            publish_subscribe, resend_on_error, no_ack_blocks, continue_after_close,
            concurrent_subscribe, topic_isolation, key_order, stack_dead_letters,
            shutdown_cancels_in_flight_work);
    };
    (@each $harness:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                let report = $crate::conformance::$name(&harness).await.expect(stringify!($name));
                println!("{report}");
            }
        )*
    };
}

/// The in-memory broker runs the same scenarios (`core/tests/conformance_memory.rs`).
impl Harness for MemoryBroker {
    type Source = MemorySource;

    async fn fresh_queue(&self) -> Result<String, BoxError> {
        Ok(format!(
            "conformance-{}",
            backstop::message::new_message_id()
        ))
    }

    async fn source(&self, queue: &str, prefetch: usize) -> Result<Self::Source, BoxError> {
        Ok(self.consume(queue, prefetch))
    }

    async fn publisher(&self) -> Result<Arc<dyn Publisher>, BoxError> {
        Ok(Arc::new(self.clone()))
    }

    async fn dead_letter_sink(&self, _queue: &str) -> Result<Arc<dyn DeadLetterSink>, BoxError> {
        Ok(Arc::new(self.dead_letter_sink()))
    }

    fn dlq_name(&self, queue: &str) -> String {
        backstop::dead_letter::dlq_name(queue)
    }
}
