//! Test support shared by the layers' unit tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetterSink;
use crate::error::{HandlerError, SinkError};
use crate::message::Message;
use crate::publish::PublishError;
use crate::request::Request;
use crate::retry::RetrySink;

/// An order from JSON, keyed by its `order_id`: the payload of the
/// whole-stack tests.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct Order {
    /// The idempotency key.
    pub(crate) order_id: String,
    /// What the tests' handlers decide by.
    pub(crate) amount: i64,
}

impl crate::payload::Payload for Order {
    fn decode(bytes: &[u8]) -> Result<Self, crate::payload::DecodeError> {
        crate::payload::json(bytes)
    }
    fn key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// A request for a `String` payload.
pub(crate) fn request(body: &str) -> Request<String> {
    let mut m = Message::new(body.to_owned()).with_message_id(format!("id-{body}"));
    m.meta.source = "orders".into();
    Request::decode(m, CancellationToken::new(), None)
}

/// A service whose n-th call (1-based) returns `script(n)`, counting calls.
#[derive(Clone)]
pub(crate) struct Scripted {
    pub(crate) calls: Arc<AtomicU32>,
    script: Arc<dyn Fn(u32) -> Result<(), HandlerError> + Send + Sync>,
}

impl Scripted {
    pub(crate) fn new(
        script: impl Fn(u32) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            calls: Arc::new(AtomicU32::new(0)),
            script: Arc::new(script),
        }
    }

    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<T: Send + 'static> tower::Service<Request<T>> for Scripted {
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), HandlerError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<T>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let r = (self.script)(n);
        Box::pin(async move { r })
    }
}

/// What a recording sink was given: the message, the destination, the delay.
pub(crate) type Taken = (Message, Option<String>, Option<Duration>);

/// A sink that records what it was given, and fails while `failing` is set.
#[derive(Clone, Default)]
pub(crate) struct RecordingSink {
    pub(crate) letters: Arc<Mutex<Vec<Taken>>>,
    pub(crate) failing: Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingSink {
    pub(crate) fn taken(&self) -> Vec<Taken> {
        self.letters.lock().expect("lock").clone()
    }

    fn record(
        &self,
        m: Message,
        dest: Option<&str>,
        delay: Option<Duration>,
    ) -> Result<(), SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::Publish {
                destination: "test".into(),
                source: PublishError::Nacked,
            });
        }
        self.letters
            .lock()
            .expect("lock")
            .push((m, dest.map(str::to_owned), delay));
        Ok(())
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for RecordingSink {
    async fn dead_letter(
        &self,
        letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        self.record(letter, destination, None)
    }
}

#[async_trait::async_trait]
impl RetrySink for RecordingSink {
    async fn retry_later(&self, copy: Message, delay: Duration) -> Result<(), SinkError> {
        self.record(copy, None, Some(delay))
    }
}
