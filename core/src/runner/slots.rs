//! A fixed set of slots the driver polls its in-flight message futures
//! in: each slot's allocation and waker are made once and reused by every
//! message that runs in it, so putting a message in flight allocates
//! nothing (a `FuturesUnordered` allocates a task node per future).
//!
//! A slot's waker queues its index and wakes the driver; the driver polls
//! the queued slots (a newly filled slot is queued at once). A wake that
//! arrives after the slot's future ended and a new one took its place only
//! polls the new one once more, which a future allows.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// The slots' shared side: the indices woken since the driver last looked,
/// and the driver's waker.
#[derive(Default)]
struct Woken {
    queue: Mutex<Vec<usize>>,
    /// True while `queue` may hold indices (read without the lock).
    any: AtomicBool,
    driver: AtomicWaker,
}

/// One slot's waker.
struct SlotWaker {
    index: usize,
    /// Set while the slot is queued, so a burst of wakes queues it once.
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.woken
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.index);
        self.woken.any.store(true, Ordering::Release);
        self.woken.driver.wake();
    }
}

/// One slot: its future (while a message runs in it) and its waker.
struct Entry<F> {
    future: Pin<Box<Option<F>>>,
    state: Arc<SlotWaker>,
    waker: Waker,
}

/// The slots; see the [module docs](self).
pub(super) struct Slots<F> {
    entries: Vec<Entry<F>>,
    /// Empty slots, reused before a new one is made.
    free: Vec<usize>,
    /// Slots to poll: filled ones, and woken ones taken from `woken`.
    ready: VecDeque<usize>,
    woken: Arc<Woken>,
    len: usize,
}

impl<F: Future> Slots<F> {
    pub(super) fn new() -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            woken: Arc::new(Woken::default()),
            len: 0,
        }
    }

    /// How many futures are in the slots.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Puts `future` in a free slot (a new one if none is free); it is
    /// polled on the next [`poll_next`](Self::poll_next).
    pub(super) fn push(&mut self, future: F) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = self.entries.len();
                let state = Arc::new(SlotWaker {
                    index,
                    queued: AtomicBool::new(false),
                    woken: Arc::clone(&self.woken),
                });
                self.entries.push(Entry {
                    future: Box::pin(None),
                    waker: Waker::from(Arc::clone(&state)),
                    state,
                });
                index
            }
        };
        let entry = &mut self.entries[index];
        entry.future.as_mut().set(Some(future));
        // Queued by hand: its first poll is not a wake.
        entry.state.queued.store(true, Ordering::Release);
        self.ready.push_back(index);
        self.len += 1;
    }

    /// Polls the queued slots until one's future ends (its output, the
    /// slot freed); `None` when every slot is empty. With `driver`, the
    /// driver's waker is registered first, so a wake is never lost while
    /// nothing is ready; without it (a look that does not wait) slots are
    /// polled only as far as they are ready.
    ///
    /// Polls at most as many futures as are in flight before yielding, so
    /// futures that keep waking themselves cannot hold the driver.
    pub(super) fn poll_next(&mut self, driver: Option<&Waker>) -> Poll<Option<F::Output>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        if let Some(driver) = driver {
            self.woken.driver.register(driver);
        }
        let mut budget = self.len;
        loop {
            if self.ready.is_empty() && self.woken.any.swap(false, Ordering::AcqRel) {
                let mut queue = self
                    .woken
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.ready.extend(queue.drain(..));
            }
            let Some(index) = self.ready.pop_front() else {
                return Poll::Pending;
            };
            if budget == 0 {
                self.ready.push_front(index);
                if let Some(driver) = driver {
                    driver.wake_by_ref();
                }
                return Poll::Pending;
            }
            let entry = &mut self.entries[index];
            // Cleared before the poll: a wake during it queues the slot again.
            entry.state.queued.store(false, Ordering::Release);
            let Some(future) = entry.future.as_mut().as_pin_mut() else {
                continue; // a late wake of a slot that has since emptied
            };
            budget -= 1;
            if let Poll::Ready(output) = future.poll(&mut Context::from_waker(&entry.waker)) {
                entry.future.as_mut().set(None);
                self.free.push(index);
                self.len -= 1;
                return Poll::Ready(Some(output));
            }
        }
    }

    /// Drops every future in the slots; returns how many there were.
    pub(super) fn clear(&mut self) -> usize {
        let dropped = self.len;
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if entry.future.is_some() {
                entry.future.as_mut().set(None);
                self.free.push(index);
            }
        }
        self.ready.clear();
        self.len = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;

    fn next<F: Future>(slots: &mut Slots<F>) -> Poll<Option<F::Output>> {
        slots.poll_next(Some(Waker::noop()))
    }

    #[test]
    fn a_slot_is_reused_and_its_allocation_kept() {
        let mut slots: Slots<std::future::Ready<u32>> = Slots::new();
        slots.push(std::future::ready(1));
        assert_eq!(next(&mut slots), Poll::Ready(Some(1)));
        let first = &raw const *slots.entries[0].future;
        slots.push(std::future::ready(2));
        assert_eq!(slots.entries.len(), 1, "the freed slot was reused");
        assert!(std::ptr::eq(first, &raw const *slots.entries[0].future));
        assert_eq!(next(&mut slots), Poll::Ready(Some(2)));
        assert_eq!(next(&mut slots), Poll::Ready(None));
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_polls_its_slot_again() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut slots: Slots<BoxFuture<'static, u32>> = Slots::new();
        slots.push(Box::pin(async move { rx.await.unwrap_or(0) + 1 }));
        slots.push(Box::pin(std::future::pending()));
        let sent = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(41)
        });
        let done = std::future::poll_fn(|cx| slots.poll_next(Some(cx.waker()))).await;
        assert!(sent.join().is_ok());
        assert_eq!(done, Some(42));
        assert_eq!(slots.len(), 1, "the pending one is still in flight");
        assert_eq!(slots.clear(), 1);
        assert_eq!(next(&mut slots), Poll::Ready(None));
    }

    #[test]
    fn a_late_wake_of_an_emptied_slot_polls_nothing() {
        struct WakeOnce(Option<Waker>);
        let kept = Arc::new(Mutex::new(WakeOnce(None)));
        let mut slots: Slots<BoxFuture<'static, u32>> = Slots::new();
        let keep = Arc::clone(&kept);
        slots.push(Box::pin(std::future::poll_fn(move |cx| {
            keep.lock().unwrap().0 = Some(cx.waker().clone());
            Poll::Ready(7)
        })));
        assert_eq!(next(&mut slots), Poll::Ready(Some(7)));
        // The ended future's waker fires after the slot emptied.
        kept.lock().unwrap().0.take().unwrap().wake();
        assert_eq!(next(&mut slots), Poll::Ready(None));
        slots.push(Box::pin(std::future::ready(8)));
        assert_eq!(next(&mut slots), Poll::Ready(Some(8)));
    }

    #[test]
    fn futures_that_keep_waking_themselves_do_not_hold_the_driver() {
        let mut slots: Slots<BoxFuture<'static, ()>> = Slots::new();
        for _ in 0..3 {
            slots.push(Box::pin(std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })));
        }
        // Each call polls at most the three in flight, then yields.
        for _ in 0..5 {
            assert_eq!(next(&mut slots), Poll::Pending);
        }
        assert_eq!(slots.clear(), 3);
    }

    #[test]
    fn a_look_without_a_driver_polls_only_what_is_ready() {
        let mut slots: Slots<BoxFuture<'static, u32>> = Slots::new();
        slots.push(Box::pin(std::future::pending()));
        assert_eq!(slots.poll_next(None), Poll::Pending);
        assert_eq!(
            slots.poll_next(None),
            Poll::Pending,
            "not woken: not polled"
        );
        slots.push(Box::pin(std::future::ready(3)));
        assert_eq!(slots.poll_next(None), Poll::Ready(Some(3)));
        assert_eq!(slots.len(), 1);
    }
}

#[cfg(test)]
mod stress {
    use super::*;
    use futures::future::BoxFuture;
    use std::time::Duration;

    /// Many futures woken from other threads (oneshots, timers, self-wakes),
    /// slots refilled as they end: every one must end, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_future_ends_once_under_cross_thread_wakes() {
        let mut slots: Slots<BoxFuture<'static, usize>> = Slots::new();
        let total = 20_000usize;
        let mut started = 0usize;
        let mut ended = vec![false; total];
        let mut count = 0;
        let r = tokio::time::timeout(Duration::from_secs(60), async {
            while count < total {
                while slots.len() < 64 && started < total {
                    let n = started;
                    started += 1;
                    let f: BoxFuture<'static, usize> = match n % 4 {
                        0 => {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            std::thread::spawn(move || {
                                let _ = tx.send(n);
                            });
                            Box::pin(async move { rx.await.unwrap() })
                        }
                        1 => Box::pin(async move {
                            tokio::task::yield_now().await;
                            n
                        }),
                        2 => Box::pin(async move {
                            tokio::time::sleep(Duration::from_micros((n % 7) as u64 * 50)).await;
                            n
                        }),
                        _ => Box::pin(async move {
                            tokio::spawn(async {}).await.unwrap();
                            n
                        }),
                    };
                    slots.push(f);
                }
                let done = if count % 3 == 0 {
                    match slots.poll_next(None) {
                        Poll::Ready(d) => d,
                        Poll::Pending => {
                            std::future::poll_fn(|cx| slots.poll_next(Some(cx.waker()))).await
                        }
                    }
                } else {
                    std::future::poll_fn(|cx| slots.poll_next(Some(cx.waker()))).await
                };
                let n = done.expect("in flight");
                assert!(!ended[n], "ended twice: {n}");
                ended[n] = true;
                count += 1;
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "stuck: {count} of {total} ended, {} in flight",
            slots.len()
        );
    }
}
