use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::Shared;
use super::queue::Unacked;
use super::settler::MemorySettler;
use crate::delivery::{Delivery, Settler};
use crate::runner::{Source, SourceError};

/// A consumer of one in-memory queue, with a prefetch bound.
///
/// Closing it (or dropping it) puts its unsettled deliveries back in the
/// queue; a later ack of one of them fails as stale, as on RabbitMQ.
#[derive(Debug)]
pub struct MemorySource {
    consumer: u64,
    /// Settles this consumer's deliveries and counts its window; it holds
    /// the broker, the queue's name and the prefetch this consumer reads.
    settler: Arc<MemorySettler>,
    /// Deliveries taken from the queue in one go (under one lock) and not
    /// handed out yet: unacked, and counted in the prefetch window, as a
    /// broker's client buffer is.
    taken: VecDeque<Delivery>,
    until_drained: bool,
    closed: bool,
}

impl MemorySource {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Self {
        MemorySource {
            consumer: shared.next_consumer(),
            settler: Arc::new(MemorySettler {
                shared,
                queue: Arc::from(queue),
                outstanding: AtomicUsize::new(0),
                prefetch: prefetch.max(1),
            }),
            taken: VecDeque::new(),
            until_drained: false,
            closed: false,
        }
    }

    /// Ends the stream once the queue has nothing ready, delayed or unacked.
    #[must_use]
    pub fn until_drained(mut self) -> Self {
        self.until_drained = true;
        self
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        &self.settler.queue
    }

    /// The labels of this consumer's metrics: the queue as both `source`
    /// and `group` (see [`MetricLabels`](crate::metrics::MetricLabels)).
    pub fn metric_labels(&self) -> crate::metrics::MetricLabels {
        crate::metrics::MetricLabels::new(self.queue(), self.queue())
    }

    fn close_now(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Taken but never handed out: back at the head of the queue, in
        // their order (each requeued at the front, the last first). Before
        // the lock: a delivery's drop takes it.
        while let Some(delivery) = self.taken.pop_back() {
            drop(delivery);
        }
        let mut queues = self.settler.shared.lock();
        if let Some(queue) = queues.get_mut(&*self.settler.queue) {
            let mine: Vec<u64> = queue
                .unacked
                .iter()
                .filter(|(_, u)| u.consumer == self.consumer)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in mine {
                if let Some(entry) = queue.unacked.remove(&tag) {
                    queue.requeue(entry.message);
                }
            }
            queue.notify.notify_waiters();
        }
        self.settler.outstanding.store(0, Ordering::SeqCst);
    }

    /// Takes what the prefetch window allows (up to [`BATCH`]) into
    /// `taken`, under one lock; hands out the first. `Err` when nothing is
    /// ready: whether the queue is drained, when the next delayed message
    /// is due, and what to wait on.
    fn try_take(
        &mut self,
    ) -> Result<Option<Delivery>, (bool, Option<Instant>, Arc<tokio::sync::Notify>)> {
        if let Some(delivery) = self.taken.pop_front() {
            return Ok(Some(delivery));
        }
        let mut queues = self.settler.shared.lock();
        if !queues.contains_key(&*self.settler.queue) {
            queues.insert(
                self.settler.queue.to_string(),
                super::queue::Queue::default(),
            );
        }
        let Some(queue) = queues.get_mut(&*self.settler.queue) else {
            return Err((false, None, Arc::new(tokio::sync::Notify::new())));
        };
        let next_due = queue.promote(Instant::now());
        let outstanding = self.settler.outstanding.load(Ordering::SeqCst);
        let room = self.settler.prefetch.saturating_sub(outstanding).min(BATCH);
        for _ in 0..room {
            let Some(mut message) = queue.ready.pop_front() else {
                break;
            };
            let tag = self.settler.shared.next_tag();
            // The queue's only reference: tagged in place, not copied.
            Arc::make_mut(&mut message).meta.delivery_tag = Some(tag);
            queue.unacked.insert(
                tag,
                Unacked {
                    consumer: self.consumer,
                    message: Arc::clone(&message),
                },
            );
            self.settler.outstanding.fetch_add(1, Ordering::SeqCst);
            let settler: Arc<dyn Settler> = self.settler.clone();
            self.taken
                .push_back(Delivery::tagged(message, settler, tag));
        }
        if let Some(delivery) = self.taken.pop_front() {
            return Ok(Some(delivery));
        }
        let drained = queue.len() == 0;
        Err((drained, next_due, Arc::clone(&queue.notify)))
    }
}

/// The most deliveries one take hands the consumer at once.
const BATCH: usize = 32;

impl Source for MemorySource {
    async fn next(&mut self) -> Option<Result<Delivery, SourceError>> {
        if self.closed {
            return None;
        }
        loop {
            let notify = match self.try_take() {
                Ok(delivery) => return delivery.map(Ok),
                Err((true, _, _)) if self.until_drained => return None,
                Err((_, _, notify)) => notify,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so no wake-up is lost; its due time
            // counts (a delayed message may have been published in between).
            let next_due = match self.try_take() {
                Ok(delivery) => return delivery.map(Ok),
                Err((true, _, _)) if self.until_drained => return None,
                Err((_, due, _)) => due,
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(&mut self) {
        self.close_now();
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        self.close_now();
    }
}
