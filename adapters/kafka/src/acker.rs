//! [`KafkaAcker`]: settles one delivery with the dispatcher.
//!
//! Kafka has no per-message ack: an ack marks the offset done so the
//! partition's watermark may pass it; a nack with requeue (or a dropped
//! delivery) puts the message back to be handed out again, and the
//! watermark stays below it. A settlement after the partition was revoked
//! is refused as stale: the new owner reads the message again.

use std::sync::Arc;

use backstop::delivery::Acker;
use backstop::error::AckError;

use crate::dispatch::{Dispatcher, Refused, Settlement, Ticket};

/// Settles one Kafka delivery; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct KafkaAcker {
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) ticket: Ticket,
}

impl KafkaAcker {
    fn settle(&self, settlement: Settlement) -> Result<(), AckError> {
        self.dispatcher
            .settle(&self.ticket, settlement)
            .map_err(|refused| {
                let t = &self.ticket;
                let (topic, partition, offset) = (&t.tp.topic, t.tp.partition, t.offset);
                AckError::Stale(match refused {
                    Refused::Fenced => format!(
                        "{topic}[{partition}] was revoked since offset {offset} was delivered; its new owner reads it again"
                    ),
                    Refused::Settled => format!("{topic}[{partition}] offset {offset} was already settled"),
                })
            })
    }
}

#[async_trait::async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) -> Result<(), AckError> {
        self.settle(Settlement::Done)
    }

    fn ack_now(&mut self) -> Option<Result<(), AckError>> {
        Some(self.settle(Settlement::Done))
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
        // Without requeue the message is dropped: its offset counts as done.
        self.settle(if requeue {
            Settlement::Requeue
        } else {
            Settlement::Done
        })
    }

    fn abandon(self: Box<Self>) {
        // Synchronous: the message is ready for redelivery at once.
        if let Err(error) = self.settle(Settlement::Requeue) {
            tracing::debug!(%error, "abandoned delivery was not requeued");
        }
    }
}
