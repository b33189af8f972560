use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Shared;
use crate::{AckError, Acker};

/// Settles one in-memory delivery by its tag.
#[derive(Debug)]
pub(crate) struct MemoryAcker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<str>,
    pub(crate) tag: u64,
    pub(crate) outstanding: Arc<AtomicUsize>,
    pub(crate) prefetch: usize,
}

impl MemoryAcker {
    fn settle(&self, requeue: Option<bool>) -> Result<(), AckError> {
        let mut queues = self.shared.lock();
        let queue = queues
            .get_mut(&*self.queue)
            .ok_or_else(|| AckError::Stale(format!("queue {} is gone", self.queue)))?;
        let Some(entry) = queue.unacked.remove(&self.tag) else {
            return Err(AckError::Stale(format!(
                "delivery tag {} on {} was already settled or its consumer closed",
                self.tag, self.queue
            )));
        };
        let was_full = self.outstanding.fetch_sub(1, Ordering::SeqCst) >= self.prefetch;
        let requeued = match requeue {
            None => {
                queue.stats.acked += 1;
                false
            }
            Some(requeue) => {
                queue.stats.nacked += 1;
                if requeue {
                    queue.requeue(entry.message);
                }
                requeue
            }
        };
        // Wake consumers only when one may wait on this: a full prefetch, a
        // requeued message, or a queue that just drained.
        if was_full || requeued || queue.len() == 0 {
            queue.notify.notify_waiters();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        self.settle(None)
    }

    fn ack_now(&mut self) -> Option<Result<(), AckError>> {
        Some(self.settle(None))
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        self.settle(Some(requeue))
    }

    fn abandon(self: Box<Self>) {
        // Synchronous: a dropped delivery is back in the queue at once.
        let _ = self.settle(Some(true));
    }
}
