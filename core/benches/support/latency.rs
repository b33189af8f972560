//! Per-message latency for the throughput benches, measured the same way on
//! the raw client and on backstop, and the `BENCH-ROW` lines that
//! `scripts/bench.sh` gathers into its summary table.
//!
//! Shared by the benches of several crates through `#[path]`:
//!
//! ```text
//! #[path = "../../../core/benches/support/latency.rs"]
//! mod latency;
//! ```
//!
//! **Latency of one message**: from the moment the consumer takes the
//! delivery from the client (the raw client's stream or `recv` returns it;
//! for backstop, the adapter's [`Source::next`] returns it to the runner) to
//! the moment its ack (RabbitMQ `basic.ack` written by lapin) or its offset
//! store (Kafka) has returned. For backstop, [`Timed`] wraps the source: it
//! stamps each delivery as it leaves the adapter and wraps its acker, which
//! records once the adapter's ack has returned; everything the stack does in
//! between (runner, concurrency limit, ack, decode, metrics, idempotency,
//! dead-letter, retry, handler) is inside the figure. Only acked deliveries
//! are counted.
//!
//! Also the helpers the benches share to compare runs: [`rate`],
//! [`Side::measured`], [`Side::best`] and [`rounds`].

#![allow(dead_code, reason = "each bench uses a part of it")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::delivery::{AckHandle, Acker, Delivery};
use backstop::error::AckError;
use backstop::runner::{Source, SourceError};

/// Latencies of one run, shared by whoever acks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latencies(Arc<Mutex<Vec<Duration>>>);

impl Latencies {
    /// A recorder with room for `n` messages.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Latencies(Arc::new(Mutex::new(Vec::with_capacity(n))))
    }

    /// Records one message received at `received` and settled now.
    pub(crate) fn record(&self, received: Instant) {
        let took = received.elapsed();
        self.0.lock().expect("latencies").push(took);
    }

    /// The median and 99th percentile of what was recorded so far.
    pub(crate) fn percentiles(&self) -> Percentiles {
        Percentiles::of(&mut self.0.lock().expect("latencies"))
    }
}

/// p50 and p99 of a set of latencies (nearest rank); zero when empty.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Percentiles {
    /// The median.
    pub(crate) p50: Duration,
    /// The 99th percentile.
    pub(crate) p99: Duration,
}

impl Percentiles {
    /// Sorts `all` and takes its percentiles.
    pub(crate) fn of(all: &mut [Duration]) -> Self {
        all.sort_unstable();
        let rank = |p: usize| {
            let i = (all.len() * p).div_ceil(100).saturating_sub(1);
            all.get(i).copied().unwrap_or_default()
        };
        Percentiles {
            p50: rank(50),
            p99: rank(99),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {:.2?}, p99 {:.2?}", self.p50, self.p99)
    }
}

/// A source that stamps each delivery as it hands it out and records its
/// latency in [`Latencies`] when its ack has returned.
#[derive(Debug)]
pub(crate) struct Timed<S> {
    inner: S,
    latencies: Latencies,
}

impl<S> Timed<S> {
    /// Wraps `inner`, recording into `latencies`.
    pub(crate) fn new(inner: S, latencies: Latencies) -> Self {
        Timed { inner, latencies }
    }
}

impl<S: Source> Source for Timed<S> {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        let delivery = self.inner.next().await;
        let received = Instant::now();
        Some(delivery?.map(|delivery| {
            let (message, inner, cancel) = delivery.into_parts();
            let acker = TimedAcker {
                inner,
                received,
                latencies: self.latencies.clone(),
            };
            Delivery::shared(message, acker).with_cancellation(cancel)
        }))
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

/// The adapter's ack handle plus when its delivery was received.
struct TimedAcker {
    inner: AckHandle,
    received: Instant,
    latencies: Latencies,
}

#[async_trait::async_trait]
impl Acker for TimedAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        let TimedAcker {
            inner,
            received,
            latencies,
        } = *self;
        inner.ack().await?;
        latencies.record(received);
        Ok(())
    }

    /// The adapter's ack at once, when it has one: the wrapper costs the
    /// backstop sides no boxed future the raw sides do not pay.
    fn ack_now(&mut self) -> Option<Result<(), AckError>> {
        let result = self.inner.ack_at_once()?;
        if result.is_ok() {
            self.latencies.record(self.received);
        }
        Some(result)
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        self.inner.nack(requeue).await
    }

    /// Dropping the inner handle unsettled abandons it through the adapter's own rule.
    fn abandon(self: Box<Self>) {}
}

/// One side of a `BENCH-ROW`: msgs/s (or ops/s) and latency percentiles.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Side {
    /// Messages (or operations) per second.
    pub(crate) rate: f64,
    /// Per-message latency.
    pub(crate) latency: Percentiles,
}

impl Side {
    /// `n` messages (or operations) in `took`, with the latencies recorded meanwhile.
    pub(crate) fn measured(n: usize, took: Duration, latencies: &Latencies) -> Self {
        Side {
            rate: rate(n, took),
            latency: latencies.percentiles(),
        }
    }

    /// The faster of two runs.
    pub(crate) fn best(self, other: Side) -> Side {
        if other.rate > self.rate { other } else { self }
    }
}

/// `n` per second of `took`.
pub(crate) fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// How many alternating rounds a bench runs: `BENCH_ROUNDS`, else `default` (at least 1).
pub(crate) fn rounds(default: usize) -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// Prints the machine-readable line `scripts/bench.sh` turns into its table:
/// `BENCH-ROW<TAB>bench<TAB>raw/s<TAB>backstop/s<TAB>raw p50 µs<TAB>raw p99 µs<TAB>backstop p50 µs<TAB>backstop p99 µs`;
/// a missing raw side is printed as `-`.
pub(crate) fn bench_row(bench: &str, raw: Option<Side>, backstop: Side) {
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    let (raw_rate, raw_p50, raw_p99) = match raw {
        Some(raw) => (
            format!("{:.0}", raw.rate),
            us(raw.latency.p50),
            us(raw.latency.p99),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    println!(
        "BENCH-ROW\t{bench}\t{raw_rate}\t{:.0}\t{raw_p50}\t{raw_p99}\t{}\t{}",
        backstop.rate,
        us(backstop.latency.p50),
        us(backstop.latency.p99)
    );
}
