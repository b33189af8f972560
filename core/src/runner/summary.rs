use std::fmt;

use crate::ack::Settled;
use crate::error::AckError;
use crate::outcome::Outcome;

/// What a run did, message by message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Deliveries taken from the source.
    pub received: u64,
    /// Acked after the handler succeeded.
    pub handled: u64,
    /// Acked after the broker confirmed the dead letter.
    pub dead_lettered: u64,
    /// Acked after a confirmed republish for a delayed retry.
    pub deferred: u64,
    /// Acked as duplicates.
    pub duplicates: u64,
    /// Nacked with requeue (store down, DLQ down, key busy); redelivered later.
    pub nacked: u64,
    /// Postponed through the delay queue for an outage or a busy key (a
    /// confirmed copy with the same attempt count, then an ack).
    pub postponed: u64,
    /// Settled, but the broker did not take the ack; redelivered later.
    pub ack_failed: u64,
    /// Still running at the shutdown deadline: dropped and left for redelivery.
    pub abandoned: u64,
    /// Acked without running, as configured (expired messages under
    /// [`TimeToLive::discard`](crate::expiry::TimeToLive::discard)).
    pub discarded: u64,
}

impl Summary {
    /// Counts one settled delivery.
    pub fn record(&mut self, result: &Result<Settled, AckError>) {
        match result {
            Ok(Settled::Acked(Outcome::Handled)) => self.handled += 1,
            Ok(Settled::Acked(Outcome::DeadLettered { .. })) => self.dead_lettered += 1,
            Ok(Settled::Acked(Outcome::Deferred { .. })) => self.deferred += 1,
            Ok(Settled::Acked(Outcome::Duplicate)) => self.duplicates += 1,
            Ok(Settled::Acked(Outcome::Discarded { .. })) => self.discarded += 1,
            Ok(Settled::Nacked(_)) => self.nacked += 1,
            Ok(Settled::Postponed(_)) => self.postponed += 1,
            Err(_) => self.ack_failed += 1,
        }
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &Summary) {
        self.received += other.received;
        self.handled += other.handled;
        self.dead_lettered += other.dead_lettered;
        self.deferred += other.deferred;
        self.duplicates += other.duplicates;
        self.nacked += other.nacked;
        self.postponed += other.postponed;
        self.ack_failed += other.ack_failed;
        self.abandoned += other.abandoned;
        self.discarded += other.discarded;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} · handled {} · dead-lettered {} · deferred {} · duplicates {} · nacked {} · postponed {} · ack failed {} · abandoned {}",
            self.received,
            self.handled,
            self.dead_lettered,
            self.deferred,
            self.duplicates,
            self.nacked,
            self.postponed,
            self.ack_failed,
            self.abandoned
        )?;
        // Only when configured and used: the line's other fields are fixed.
        if self.discarded > 0 {
            write!(f, " · discarded {}", self.discarded)?;
        }
        Ok(())
    }
}
