//! [`CallWatch`]: a watchdog over the transactional producer's blocking
//! calls.
//!
//! librdkafka can block in `send_offsets_to_transaction` past its timeout,
//! for good, when the group coordinator it cached is lost (a broker killed
//! and restarted: the coordinator request is only retried on a later
//! broker state change that may never come; confluentinc/librdkafka#5456
//! and #5511, open in 2.12). The poll thread is then stuck: nothing is
//! polled, committed or aborted, and the open transaction holds the last
//! stable offset of every partition it wrote to, so `read_committed`
//! readers see nothing behind it until the coordinator times it out.
//!
//! No call into librdkafka can be cancelled, so the watchdog does what a
//! supervisor would: when one call has run for longer than its timeout
//! plus a grace, it stops the source with a fatal error naming the call.
//! The runner returns that error and the process should exit (the order
//! worker stops its other sources and exits); the restart, with the same
//! `transactional.id`, aborts the open transaction at `init_transactions`,
//! and its messages run again from the committed offsets (their marks were
//! never written).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog looks.
const EVERY: Duration = Duration::from_millis(500);

/// A blocking call of the transactional producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Call {
    // 1 to 7: three bits of the watch's word.
    Init = 1,
    Begin,
    SendOffsets,
    Commit,
    Abort,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Init => "init_transactions",
            Call::Begin => "begin_transaction",
            Call::SendOffsets => "send_offsets_to_transaction",
            Call::Commit => "commit_transaction",
            Call::Abort => "abort_transaction",
        }
    }

    fn from_u8(n: u8) -> Option<Call> {
        [
            Call::Init,
            Call::Begin,
            Call::SendOffsets,
            Call::Commit,
            Call::Abort,
        ]
        .into_iter()
        .find(|c| *c as u8 == n)
    }
}

/// The running call and when it started, in one word so the watchdog
/// never pairs one call's start with another's name: milliseconds since
/// [`epoch`] (plus one) shifted left by [`CALL_BITS`], or'd with the
/// [`Call`]; 0 while no call runs.
#[derive(Debug, Default)]
struct State(AtomicU64);

/// The bits of [`State`] that name the call.
const CALL_BITS: u32 = 3;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX >> CALL_BITS) + 1
}

/// The calls of one transactional producer, as its watchdog sees them.
#[derive(Debug, Default)]
pub(crate) struct CallWatch {
    state: Arc<State>,
}

/// A call being watched; dropping it ends the call.
#[must_use]
pub(crate) struct Running<'a>(&'a State);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.0.store(0, Ordering::Release);
    }
}

impl CallWatch {
    /// `call` starts now.
    pub(crate) fn enter(&self, call: Call) -> Running<'_> {
        self.state
            .0
            .store(now_ms() << CALL_BITS | call as u64, Ordering::Release);
        Running(&self.state)
    }

    /// The call running for longer than `limit`, and for how long.
    fn stuck(state: &State, limit: Duration) -> Option<(Call, Duration)> {
        let word = state.0.load(Ordering::Acquire);
        if word == 0 {
            return None;
        }
        let since = word >> CALL_BITS;
        let running = Duration::from_millis(now_ms().saturating_sub(since));
        (running > limit)
            .then(|| Call::from_u8(u8::try_from(word & ((1 << CALL_BITS) - 1)).ok()?))
            .flatten()
            .map(|call| (call, running))
    }

    /// Starts the watchdog thread: once a call has run for longer than
    /// `limit`, it calls `stuck` with the call's name and how long it ran,
    /// and ends. It also ends when this watch is dropped.
    pub(crate) fn guard(
        &self,
        limit: Duration,
        stuck: impl FnOnce(&'static str, Duration) + Send + 'static,
    ) -> std::io::Result<()> {
        let state: Weak<State> = Arc::downgrade(&self.state);
        std::thread::Builder::new()
            .name("backstop-kafka-txn-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EVERY);
                    let Some(state) = state.upgrade() else {
                        return;
                    };
                    if let Some((call, running)) = Self::stuck(&state, limit) {
                        stuck(call.name(), running);
                        return;
                    }
                }
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_call_running_past_its_limit_is_reported_once_with_its_name() {
        let watch = CallWatch::default();
        let (tx, rx) = mpsc::channel();
        watch
            .guard(Duration::from_millis(200), move |call, running| {
                let _ = tx.send((call, running));
            })
            .expect("watchdog thread");
        {
            let _quick = watch.enter(Call::Commit);
        }
        std::thread::sleep(Duration::from_millis(800));
        assert!(rx.try_recv().is_err(), "a call that ended is not stuck");
        let _stuck = watch.enter(Call::SendOffsets);
        let (call, running) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stuck call is reported");
        assert_eq!(call, "send_offsets_to_transaction");
        assert!(running > Duration::from_millis(200));
        assert!(
            rx.recv_timeout(Duration::from_secs(1)).is_err(),
            "reported once"
        );
    }
}
