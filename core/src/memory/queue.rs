use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::Message;

/// Counts of one in-memory queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub ready: usize,
    /// Messages waiting for their due time.
    pub delayed: usize,
    /// Delivered, not yet settled.
    pub unacked: usize,
    /// Accepted by publishes, ever.
    pub published: u64,
    /// Acked, ever.
    pub acked: u64,
    /// Nacked (requeued or dropped), ever.
    pub nacked: u64,
    /// Put back for redelivery (nack with requeue, a dropped delivery, a closed consumer), ever.
    pub redelivered: u64,
    /// Publishes refused because the queue was full, ever.
    pub rejected: u64,
}

#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) consumer: u64,
    /// Shared with the delivery: kept to requeue it, never copied unless it is.
    pub(crate) message: Arc<Message>,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// The queue's name, one copy shared by every message published to it
    /// (their [`Meta::source`](crate::message::Meta::source)); made on the
    /// first publish.
    pub(crate) name: Option<Arc<str>>,
    /// Shared from the publish on: a delivery takes a reference, not a
    /// copy, and a redelivery reuses it.
    pub(crate) ready: VecDeque<Arc<Message>>,
    pub(crate) delayed: BTreeMap<(Instant, u64), Arc<Message>>,
    /// By delivery tag (foldhash: an insert per delivery, a removal per settle).
    pub(crate) unacked: HashMap<u64, Unacked, foldhash::fast::RandomState>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) max_len: Option<usize>,
    pub(crate) stats: QueueStats,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.unacked.len()
    }

    /// Moves due delayed messages to the ready list; returns the next due time.
    pub(crate) fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            let message = entry.remove();
            self.ready.push_back(message);
        }
        None
    }

    pub(crate) fn requeue(&mut self, mut message: Arc<Message>) {
        // Copied only if the stack still holds it.
        Arc::make_mut(&mut message).meta.redelivered = true;
        self.stats.redelivered += 1;
        self.ready.push_front(message);
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.len(),
            delayed: self.delayed.len(),
            unacked: self.unacked.len(),
            ..self.stats
        }
    }
}
