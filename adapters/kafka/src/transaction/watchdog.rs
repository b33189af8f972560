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

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use backstop::runner::Liveness;

/// How often the watchdog looks.
const EVERY: Duration = Duration::from_millis(500);

/// A blocking call of the transactional producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Call {
    Init,
    Begin,
    SendOffsets,
    Commit,
    Abort,
}

impl Call {
    const ALL: [Call; 5] = [
        Call::Init,
        Call::Begin,
        Call::SendOffsets,
        Call::Commit,
        Call::Abort,
    ];

    fn name(self) -> &'static str {
        match self {
            Call::Init => "init_transactions",
            Call::Begin => "begin_transaction",
            Call::SendOffsets => "send_offsets_to_transaction",
            Call::Commit => "commit_transaction",
            Call::Abort => "abort_transaction",
        }
    }
}

/// The running call: a [`Liveness`] that beats when a call starts and ends
/// when it returns (so its silence is how long the call has run), and the
/// call's name.
#[derive(Debug)]
struct Watched {
    call_started: Liveness,
    call: AtomicU8,
}

/// The calls of one transactional producer, as its watchdog sees them.
#[derive(Debug)]
pub(crate) struct CallWatch {
    inner: Arc<Watched>,
}

impl Default for CallWatch {
    fn default() -> Self {
        let call_started = Liveness::new("a Kafka transactional call");
        call_started.end();
        CallWatch {
            inner: Arc::new(Watched {
                call_started,
                call: AtomicU8::new(0),
            }),
        }
    }
}

/// A call being watched; dropping it ends the call.
#[must_use]
pub(crate) struct Running<'a>(&'a Watched);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.call_started.end();
    }
}

impl Watched {
    /// The call running for longer than `limit`, and for how long. The
    /// silence is read again after the name: a call that started in
    /// between is not the one that ran long.
    fn stuck(&self, limit: Duration) -> Option<(Call, Duration)> {
        let running = self.call_started.silent_for();
        if running <= limit {
            return None;
        }
        let call = Call::ALL
            .get(usize::from(self.call.load(Ordering::Acquire)))
            .copied()?;
        (self.call_started.silent_for() >= running).then_some((call, running))
    }
}

impl CallWatch {
    /// `call` starts now.
    pub(crate) fn enter(&self, call: Call) -> Running<'_> {
        self.inner.call.store(call as u8, Ordering::Release);
        self.inner.call_started.beat();
        Running(&self.inner)
    }

    /// Starts the watchdog thread: once a call has run for longer than
    /// `limit`, it calls `stuck` with the call's name and how long it ran,
    /// and ends. It also ends when this watch is dropped.
    pub(crate) fn guard(
        &self,
        limit: Duration,
        stuck: impl FnOnce(&'static str, Duration) + Send + 'static,
    ) -> std::io::Result<()> {
        let watched: Weak<Watched> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("backstop-kafka-txn-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EVERY);
                    let Some(watched) = watched.upgrade() else {
                        return;
                    };
                    if let Some((call, running)) = watched.stuck(limit) {
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
