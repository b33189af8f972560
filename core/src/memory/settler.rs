use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Shared;
use crate::delivery::Settler;
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

/// Settles the deliveries of one in-memory consumer by their tags (one
/// value the consumer's deliveries share).
#[derive(Debug)]
pub(crate) struct MemorySettler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<str>,
    /// The consumer's deliveries not settled yet (its prefetch window).
    pub(crate) outstanding: AtomicUsize,
    pub(crate) prefetch: usize,
}

impl MemorySettler {
    #[inline]
    fn settle(&self, tag: u64, settlement: Settlement) -> Result<(), AckError> {
        let mut queues = self.shared.lock();
        let queue = queues
            .get_mut(&*self.queue)
            .ok_or_else(|| AckError::Stale(format!("queue {} is gone", self.queue)))?;
        let Some(entry) = queue.unacked.remove(&tag) else {
            return Err(AckError::Stale(format!(
                "delivery tag {} on {} was already settled or its consumer closed",
                tag, self.queue
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
impl Settler for MemorySettler {
    async fn ack(&self, tag: u64) -> Result<(), AckError> {
        self.settle(tag, Settlement::Ack)
    }

    fn ack_now(&self, tag: u64) -> Option<Result<(), AckError>> {
        Some(self.settle(tag, Settlement::Ack))
    }

    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), AckError> {
        self.settle(
            tag,
            if requeue {
                Settlement::Requeue
            } else {
                Settlement::Drop
            },
        )
    }

    fn abandon(self: Arc<Self>, tag: u64) {
        // Synchronous: a dropped delivery is back in the queue at once.
        let _ = self.settle(tag, Settlement::Requeue);
    }
}
