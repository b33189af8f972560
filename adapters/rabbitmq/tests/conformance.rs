//! The broker-neutral conformance scenarios, run against RabbitMQ.

mod common;

use std::sync::{Arc, Mutex};

use backstop::dead_letter::DeadLetterSink;
use backstop::error::BoxError;
use backstop::publish::Publisher;
use backstop_rabbitmq::{RabbitMq, RabbitSource, Topology};
use backstop_testkit::conformance::Harness;

/// Each queue is a fresh quorum topology (queue, DLX, DLQ), deleted when the harness is dropped.
struct RabbitHarness {
    rabbit: RabbitMq,
    declared: Mutex<Vec<Topology>>,
}

impl RabbitHarness {
    async fn connect() -> Self {
        RabbitHarness {
            rabbit: common::rabbit().await,
            declared: Mutex::default(),
        }
    }
}

impl Drop for RabbitHarness {
    fn drop(&mut self) {
        let declared = std::mem::take(&mut *self.declared.lock().unwrap());
        // Dropped inside the test's runtime: clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let rabbit = common::rabbit().await;
                for topology in &declared {
                    common::cleanup(&rabbit, topology).await;
                }
                rabbit.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

impl Harness for RabbitHarness {
    type Source = RabbitSource;

    async fn fresh_queue(&self) -> Result<String, BoxError> {
        let topology = Topology::quorum(common::unique("conformance"));
        self.rabbit.declare(&topology).await?;
        let queue = topology.queue().to_owned();
        self.declared.lock().unwrap().push(topology);
        Ok(queue)
    }

    async fn source(&self, queue: &str, prefetch: usize) -> Result<RabbitSource, BoxError> {
        Ok(self.rabbit.source(queue, prefetch).await?)
    }

    async fn publisher(&self) -> Result<Arc<dyn Publisher>, BoxError> {
        Ok(Arc::new(self.rabbit.publisher()))
    }

    async fn dead_letter_sink(&self, _queue: &str) -> Result<Arc<dyn DeadLetterSink>, BoxError> {
        Ok(Arc::new(self.rabbit.dead_letter_sink()))
    }

    fn dlq_name(&self, queue: &str) -> String {
        backstop_rabbitmq::topology::dlq_name(queue)
    }
}

backstop_testkit::conformance_tests!(RabbitHarness::connect().await);
