//! The runner's in-flight messages: polled in place by the runner's own
//! task, or (opt-in, [`Runner::task_per_message`](super::Runner::task_per_message))
//! each on a task of its own.
//!
//! In place, every message future lives in one of the driver's
//! [`Slots`], which the runner polls from the same `select!` that waits
//! for the source, for readiness and for the breaker, so in-flight work is
//! never left unpolled while the runner waits, no task is spawned per
//! message, and nothing is allocated per message (a slot is reused). A panic that
//! escapes a message future is caught for that message alone (its
//! [`Slot`]): the future, with the delivery and any lease it holds, is
//! dropped, so the delivery is nacked with requeue and the lease released,
//! exactly as when a spawned task panics.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinSet};

use super::slots::Slots;
use crate::ack::Settled;
use crate::error::AckError;

/// What a message is to the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A message the breaker counts.
    Counted,
    /// Postponed by a pause: the breaker does not count it.
    Uncounted,
    /// The half-open breaker's probe: counted, and nothing more is fetched
    /// until it settled.
    Probe,
}

/// How one message's future ended.
#[derive(Debug)]
pub(super) enum Done {
    /// It settled (or settling failed).
    Settled {
        result: Result<Settled, AckError>,
        kind: Kind,
    },
    /// It panicked outside the handler; its delivery is redelivered.
    Panicked { panic: String, kind: Kind },
    /// It was dropped unfinished at the shutdown deadline; its delivery is
    /// redelivered.
    Abandoned,
}

pin_project_lite::pin_project! {
    /// One message's future, with its panic caught and its [`Kind`].
    pub(super) struct Slot<F> {
        #[pin]
        future: F,
        kind: Kind,
    }
}

impl<F> Slot<F> {
    /// A message's future.
    pub(super) fn new(future: F, kind: Kind) -> Self {
        Slot { future, kind }
    }
}

impl<F> Future for Slot<F>
where
    F: Future<Output = Result<Settled, AckError>>,
{
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = self.project();
        let kind = *this.kind;
        let future = this.future;
        // After a panic the slot is never polled again: the set drops it.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(Done::Settled { result, kind }),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Done::Panicked {
                panic: crate::catch_panic::panic_text(panic.as_ref()),
                kind,
            }),
        }
    }
}

/// The in-flight set; see the [module docs](self).
pub(super) enum InFlight<F> {
    /// Polled by the runner's task.
    InPlace(Slots<Slot<F>>),
    /// A task per message.
    Tasks(JoinSet<Done>),
}

impl<F> InFlight<F>
where
    F: Future<Output = Result<Settled, AckError>> + Send + 'static,
{
    /// An empty set: in place, or a task per message.
    pub(super) fn new(task_per_message: bool) -> Self {
        if task_per_message {
            InFlight::Tasks(JoinSet::new())
        } else {
            InFlight::InPlace(Slots::new())
        }
    }

    /// Adds one message's future.
    #[inline]
    pub(super) fn push(&mut self, slot: Slot<F>) {
        match self {
            InFlight::InPlace(set) => set.push(slot),
            InFlight::Tasks(tasks) => {
                tasks.spawn(slot);
            }
        }
    }

    /// How many are in flight.
    pub(super) fn len(&self) -> usize {
        match self {
            InFlight::InPlace(set) => set.len(),
            InFlight::Tasks(tasks) => tasks.len(),
        }
    }

    /// The next to end; `None` when nothing is in flight. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Done> {
        match self {
            InFlight::InPlace(set) => {
                std::future::poll_fn(|cx| set.poll_next(Some(cx.waker()))).await
            }
            InFlight::Tasks(tasks) => tasks.join_next().await.map(joined),
        }
    }

    /// One that has already ended, without waiting.
    #[inline]
    pub(super) fn try_next(&mut self) -> Option<Done> {
        match self {
            InFlight::InPlace(set) => match set.poll_next(None) {
                Poll::Ready(done) => done,
                Poll::Pending => None,
            },
            InFlight::Tasks(tasks) => tasks.try_join_next().map(joined),
        }
    }

    /// Drops everything still in flight (each delivery is nacked with
    /// requeue by its drop, each lease released); returns what ended,
    /// unfinished ones as [`Done::Abandoned`].
    pub(super) async fn abandon_all(&mut self) -> Vec<Done> {
        match self {
            InFlight::InPlace(set) => {
                let abandoned = set.clear();
                std::iter::repeat_with(|| Done::Abandoned)
                    .take(abandoned)
                    .collect()
            }
            InFlight::Tasks(tasks) => {
                tasks.abort_all();
                let mut done = Vec::with_capacity(tasks.len());
                while let Some(joined_task) = tasks.join_next().await {
                    done.push(joined(joined_task));
                }
                done
            }
        }
    }
}

/// What a joined task ended with.
fn joined(result: Result<Done, JoinError>) -> Done {
    match result {
        Ok(done) => done,
        Err(error) if error.is_cancelled() => Done::Abandoned,
        // (A slot catches its own panic; this is the task's.)
        Err(error) => Done::Panicked {
            panic: error.to_string(),
            kind: Kind::Counted,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    async fn settles(n: u32) -> Result<Settled, AckError> {
        tokio::task::yield_now().await;
        if n == 1 {
            panic!("message {n} panicked");
        }
        Ok(Settled::Acked(Outcome::Handled))
    }

    #[tokio::test]
    async fn a_panic_ends_its_own_slot_only_in_both_modes() {
        for task_per_message in [false, true] {
            let mut set = InFlight::new(task_per_message);
            for n in 0..3 {
                set.push(Slot::new(Box::pin(settles(n)), Kind::Counted));
            }
            assert_eq!(set.len(), 3);
            let (mut settled, mut panicked) = (0, Vec::new());
            while let Some(done) = set.next().await {
                match done {
                    Done::Settled { result, kind } => {
                        assert!(kind == Kind::Counted && result.is_ok());
                        settled += 1;
                    }
                    Done::Panicked { panic, kind } => {
                        assert_eq!(kind, Kind::Counted);
                        panicked.push(panic);
                    }
                    Done::Abandoned => panic!("nothing was abandoned"),
                }
            }
            assert_eq!(settled, 2, "task per message: {task_per_message}");
            assert_eq!(panicked.len(), 1);
            assert!(
                panicked[0].contains("message 1 panicked"),
                "{panicked:?} (task per message: {task_per_message})"
            );
            assert_eq!(set.len(), 0);
        }
    }

    #[tokio::test]
    async fn abandoning_drops_what_is_unfinished_in_both_modes() {
        for task_per_message in [false, true] {
            let mut set = InFlight::new(task_per_message);
            let dropped = std::sync::Arc::new(());
            for _ in 0..2 {
                let held = std::sync::Arc::clone(&dropped);
                set.push(Slot::new(
                    Box::pin(async move {
                        let _held = held;
                        std::future::pending::<Result<Settled, AckError>>().await
                    }) as futures::future::BoxFuture<'static, _>,
                    Kind::Uncounted,
                ));
            }
            assert!(set.try_next().is_none());
            let done = set.abandon_all().await;
            assert_eq!(done.len(), 2);
            assert!(done.iter().all(|d| matches!(d, Done::Abandoned)));
            assert_eq!(
                std::sync::Arc::strong_count(&dropped),
                1,
                "every unfinished future was dropped (task per message: {task_per_message})"
            );
        }
    }
}
