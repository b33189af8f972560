use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Shared;
use crate::delivery::Acker;
use crate::error::AckError;

/// How an in-memory delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    /// Acked: the queue forgets it.
    Ack,
    /// Nacked and put back at the head of the queue.
    Requeue,
    /// Nacked without requeue: dropped (there is no dead-letter exchange here).
    Drop,
}

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
    #[inline]
    fn settle(&self, settlement: Settlement) -> Result<(), AckError> {
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
        let requeued = match settlement {
            Settlement::Ack => {
                queue.stats.acked += 1;
                false
            }
            Settlement::Requeue => {
                queue.stats.nacked += 1;
                queue.requeue(entry.message);
                true
            }
            Settlement::Drop => {
                queue.stats.nacked += 1;
                false
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
        self.settle(Settlement::Ack)
    }

    fn ack_now(&mut self) -> Option<Result<(), AckError>> {
        Some(self.settle(Settlement::Ack))
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        self.settle(if requeue {
            Settlement::Requeue
        } else {
            Settlement::Drop
        })
    }

    fn abandon(self: Box<Self>) {
        // Synchronous: a dropped delivery is back in the queue at once.
        let _ = self.settle(Settlement::Requeue);
    }
}
