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
    shared: Arc<Shared>,
    queue: Arc<str>,
    consumer: u64,
    prefetch: usize,
    /// Settles this consumer's deliveries (and counts its window).
    settler: Arc<MemorySettler>,
    until_drained: bool,
    closed: bool,
}

impl MemorySource {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str, prefetch: usize) -> Self {
        let consumer = shared.next_consumer();
        let queue: Arc<str> = Arc::from(queue);
        let prefetch = prefetch.max(1);
        MemorySource {
            settler: Arc::new(MemorySettler {
                shared: Arc::clone(&shared),
                queue: Arc::clone(&queue),
                outstanding: AtomicUsize::new(0),
                prefetch,
            }),
            shared,
            queue,
            consumer,
            prefetch,
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
        &self.queue
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
        let mut queues = self.shared.lock();
        if let Some(queue) = queues.get_mut(&*self.queue) {
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

    fn try_take(
        &self,
    ) -> Result<Option<Delivery>, (bool, Option<Instant>, Arc<tokio::sync::Notify>)> {
        let mut queues = self.shared.lock();
        if !queues.contains_key(&*self.queue) {
            queues.insert(self.queue.to_string(), super::queue::Queue::default());
        }
        let Some(queue) = queues.get_mut(&*self.queue) else {
            return Err((false, None, Arc::new(tokio::sync::Notify::new())));
        };
        let next_due = queue.promote(Instant::now());
        if self.settler.outstanding.load(Ordering::SeqCst) < self.prefetch
            && let Some(mut message) = queue.ready.pop_front()
        {
            let tag = self.shared.next_tag();
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
            return Ok(Some(Delivery::tagged(message, settler, tag)));
        }
        let drained = queue.len() == 0;
        Err((drained, next_due, Arc::clone(&queue.notify)))
    }
}

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
