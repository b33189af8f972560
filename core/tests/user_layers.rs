//! The user's own tower layers in the stack, on the in-memory broker.
//!
//! A rate limit around each message (`StackBuilder::around_message`),
//! shared across 64 messages in flight through one `governor` limiter
//! behind an `Arc` (a per-clone tower `RateLimit` would limit each message
//! alone): no second in the run starts more messages than the quota and
//! its burst allow, and every message is handled once.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use backstop::error::Error;
use backstop::memory::MemoryBroker;
use backstop::outcome::Outcome;
use backstop::request::Request;
use backstop::stack::MessageService;
use backstop::{Context, HandlerError, Message, Runner, StackBuilder};
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tower::{Layer, Service};

/// Waits for the shared limiter before each message.
#[derive(Clone)]
struct SharedRateLimit(Arc<DefaultDirectRateLimiter>);

impl<S> Layer<S> for SharedRateLimit {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limiter: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
struct Limited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl<T: Send + Sync + 'static> Service<Request<T>> for Limited<MessageService<T>> {
    type Response = Outcome;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Outcome, Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        // The service polled ready goes with the call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = Arc::clone(&self.limiter);
        Box::pin(async move {
            limiter.until_ready().await;
            inner.call(request).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_around_each_message_holds_across_64_in_flight() {
    const PER_SECOND: u32 = 40;
    const BURST: u32 = 4;
    const MESSAGES: usize = 60;
    let broker = MemoryBroker::new();
    for i in 0..MESSAGES {
        broker
            .publish_now("jobs", Message::new(format!("job-{i}")))
            .unwrap();
    }
    let quota = Quota::per_second(NonZeroU32::new(PER_SECOND).unwrap())
        .allow_burst(NonZeroU32::new(BURST).unwrap());
    let limit = SharedRateLimit(Arc::new(RateLimiter::direct(quota)));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&starts);
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .around_message(limit)
        .build(backstop::handler_fn(move |_job: String, _c: Context| {
            s.lock().unwrap().push(Instant::now());
            async { Ok::<_, HandlerError>(()) }
        }));
    // Starts are measured from here, not from the first handler's start:
    // a first handler descheduled for a moment (a loaded machine) would
    // make every later start look early. The limit's first permit comes
    // after this instant, so this only weakens the bound by how late it came.
    let began = Instant::now();
    let summary = Runner::new(broker.consume("jobs", 64).until_drained(), stack)
        .concurrency(64)
        .run()
        .await
        .unwrap();
    assert_eq!(summary.handled, MESSAGES as u64, "{summary}");
    assert_eq!(broker.stats("jobs").acked, MESSAGES as u64);

    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    // GCRA: after the burst, one start per 1/PER_SECOND. The n-th start
    // (0-based) comes no sooner than (n + 1 - BURST) intervals after the
    // run began, less 10 ms for timers. A limit that is not shared lets
    // all 64 in flight start at once, and fails this.
    let interval = Duration::from_secs(1) / PER_SECOND;
    for (n, at) in starts.iter().enumerate().skip(BURST as usize) {
        let earliest = interval * (n as u32 + 1 - BURST);
        let waited = *at - began;
        assert!(
            waited + Duration::from_millis(10) >= earliest,
            "start {n} after {waited:?}, the limit allows it after {earliest:?}"
        );
    }
    // And the limit was what held them: 64 were in flight at once.
    let span = *starts.last().unwrap() - began;
    assert!(
        span >= interval * (MESSAGES as u32 - BURST) * 9 / 10,
        "{span:?}"
    );
}
