//! The allocation of a message's future, recycled for a later message of
//! the same [`Stack`](super::Stack).
//!
//! A message's future is one concrete type per stack, about 2 KB: bigger
//! than the allocator's per-thread caches hold, so allocating and freeing
//! one per message costs more than the rest of its bookkeeping (a large
//! allocation makes glibc consolidate its small free chunks first). A
//! finished future keeps nothing (its body dropped what it held when it
//! returned), so its box is kept in a bounded pool and the next message's
//! future is made in it: the box knows the stack's concrete future type
//! and how to make one ([`Run::restart`]), so the future is written once,
//! into place (a type-erased reusable box moves it in twice). A future dropped
//! before it finishes (an abandoned delivery), one that panicked and one
//! that ended in an error are dropped with their box, never pooled.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use crate::ack::Settled;
use crate::delivery::Delivery;
use crate::error::AckError;

/// A message's boxed future, as the pool keeps it: its concrete type is
/// the stack's own, so a finished one is restarted in place for the next
/// delivery (the next future is written straight into the box).
pub(super) type Boxed = Pin<Box<dyn Run>>;

/// A box holding one message's future of a stack.
pub(super) trait Run: Send {
    /// Replaces the (finished) future with `delivery`'s.
    fn restart(self: Pin<&mut Self>, delivery: Delivery);

    /// Polls the future.
    fn poll_run(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Settled, AckError>>;
}

pin_project_lite::pin_project! {
    /// The future `make` made, and `make`, to make the next one in its place.
    struct RunBox<M, F> {
        make: M,
        #[pin]
        future: F,
    }
}

impl<M, F> Run for RunBox<M, F>
where
    M: Fn(Delivery) -> F + Send,
    F: Future<Output = Result<Settled, AckError>> + Send,
{
    #[inline]
    fn restart(self: Pin<&mut Self>, delivery: Delivery) {
        let mut this = self.project();
        this.future.set((this.make)(delivery));
    }

    #[inline]
    fn poll_run(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Settled, AckError>> {
        self.project().future.poll(cx)
    }
}

/// `delivery`'s future: restarted in `recycled` when given (a finished box
/// of the same stack), else made by `make` in a new box (`make` is called
/// only then, so a recycled box costs nothing to set up).
pub(super) fn place<M, F>(
    recycled: Option<Boxed>,
    delivery: Delivery,
    make: impl FnOnce() -> M,
) -> Boxed
where
    M: Fn(Delivery) -> F + Send + 'static,
    F: Future<Output = Result<Settled, AckError>> + Send + 'static,
{
    match recycled {
        Some(mut boxed) => {
            boxed.as_mut().restart(delivery);
            boxed
        }
        None => {
            let make = make();
            let future = make(delivery);
            Box::pin(RunBox { make, future })
        }
    }
}

/// How many finished boxes a stack keeps (about 2 KB each): more than a
/// runner keeps in flight at its usual concurrency.
const KEPT: usize = 256;

/// The finished boxes of one stack and its clones.
#[derive(Default)]
pub(super) struct Recycler {
    free: Mutex<Vec<Boxed>>,
}

impl Recycler {
    /// A finished box, if one is kept.
    pub(super) fn take(&self) -> Option<Boxed> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Keeps `boxed` (whose future finished) for a later message, while
    /// fewer than [`KEPT`] are kept.
    fn give_back(&self, boxed: Boxed) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEPT {
            free.push(boxed);
        }
    }
}

/// The future of one delivery through a [`Stack`](super::Stack): it
/// settles the delivery and says how.
///
/// Its allocation is recycled for a later delivery once it finishes (see
/// the module docs); polling it again after that panics, as for any
/// finished future.
pub struct StackFuture {
    boxed: Option<Boxed>,
    recycler: Arc<Recycler>,
}

impl StackFuture {
    /// The future in `boxed`, given back to `recycler` once it finishes.
    pub(super) fn new(boxed: Boxed, recycler: Arc<Recycler>) -> Self {
        StackFuture {
            boxed: Some(boxed),
            recycler,
        }
    }
}

impl Future for StackFuture {
    type Output = Result<Settled, AckError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(boxed) = this.boxed.as_mut() else {
            panic!("a StackFuture was polled after it finished");
        };
        let output = std::task::ready!(boxed.as_mut().poll_run(cx));
        // Only a settled delivery's box is kept: a future that ended in an
        // error may hold what it did not get to use (tower's `Oneshot`
        // keeps its request when its service's readiness fails).
        if let Some(boxed) = this.boxed.take()
            && output.is_ok()
        {
            this.recycler.give_back(boxed);
        }
        Poll::Ready(output)
    }
}

impl std::fmt::Debug for StackFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackFuture")
            .field("finished", &self.boxed.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn settled() -> Result<Settled, AckError> {
        Ok(Settled::Acked(Outcome::Handled))
    }

    /// `future` in a box of its own (never restarted).
    fn once<F>(future: F) -> Boxed
    where
        F: Future<Output = Result<Settled, AckError>> + Send + 'static,
    {
        Box::pin(RunBox {
            make: |_: Delivery| -> F { unreachable!("a test's box is not restarted") },
            future,
        })
    }

    #[tokio::test]
    async fn a_settled_box_is_kept_and_an_unfinished_or_failed_one_is_not() {
        let recycler = Arc::new(Recycler::default());
        let finished = StackFuture::new(once(async { settled() }), Arc::clone(&recycler));
        assert!(matches!(
            finished.await,
            Ok(Settled::Acked(Outcome::Handled))
        ));
        assert!(recycler.take().is_some(), "the finished box is kept");
        assert!(recycler.take().is_none(), "and only once");

        let dropped = StackFuture::new(once(std::future::pending()), Arc::clone(&recycler));
        drop(dropped);
        assert!(recycler.take().is_none(), "an unfinished box is dropped");

        let failed = StackFuture::new(
            once(async { Err(AckError::ChannelGone("closed".into())) }),
            Arc::clone(&recycler),
        );
        assert!(failed.await.is_err());
        assert!(
            recycler.take().is_none(),
            "a box that ended in an error is dropped"
        );
    }

    #[test]
    fn at_most_kept_boxes_are_kept() {
        let recycler = Recycler::default();
        for _ in 0..KEPT + 10 {
            recycler.give_back(once(async { settled() }));
        }
        let mut kept = 0;
        while recycler.take().is_some() {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }
}
