//! Exactly-once hand-off: what a delivery produced, committed with the
//! offsets it follows from, in one Kafka transaction.
//!
//! With [`KafkaConfig::exactly_once`](crate::KafkaConfig::exactly_once) set,
//! each delivery of a [`KafkaSource`](crate::KafkaSource) belongs to its
//! source's transaction ([`backstop::transaction`]): its dead letter, its
//! retry copy and its handler's publishes (through
//! [`TransactionalPublishLayer`]) are kept in memory beside it (`Pending`),
//! and so are its idempotency marks. The poll thread commits (see
//! `Transactor`) every [`ExactlyOnce::commit_interval`] or every
//! [`ExactlyOnce::commit_every`] settled messages:
//!
//! 1. each partition's watermark (never past an unfinished message),
//! 2. the records of every message below it, and nothing else (a message
//!    still running, or whose offset is not covered yet, waits for a later
//!    transaction; one that ended in an error produced nothing),
//! 3. `send_offsets_to_transaction` with those watermarks and the
//!    consumer's group metadata (a member fenced by a rebalance cannot
//!    commit: KIP-447), then `commit_transaction`;
//! 4. after the commit returned, the messages' idempotency marks are
//!    written. Never before: a mark written before an abort would make the
//!    redelivery a duplicate and lose what the transaction held.
//!
//! On an abort (a record the broker refused, a timeout, a fenced group
//! generation) every partition of the transaction is rewound to its last
//! committed offset: its in-flight deliveries are fenced (their handlers
//! cancelled, their settlements refused), their records dropped, their
//! leases released without counting a failed run, and the consumer seeks
//! back, so the messages run again into the next transaction. A producer
//! fenced by a newer instance with the same `transactional.id` (this
//! instance was replaced) stops the source with a fatal error. On revoke
//! the open work is committed inside the callback before the partitions
//! go; on close, once more before leaving the group. Auto commit is off.
//!
//! One transactional producer per source, with a `transactional.id` that is
//! stable per running instance (`<group>.<instance id>`): its restart calls
//! `init_transactions`, which aborts the predecessor's open transaction at
//! once. Consumers of the outputs read with `isolation.level=read_committed`
//! (backstop's own consumers do).

mod pending;
mod publish;
mod transactor;
mod watchdog;

pub use self::publish::{TransactionalPublishLayer, TransactionalPublishService};

pub(crate) use self::pending::{DeliverySlot, Pending, Record};
#[cfg(test)]
pub(crate) use self::transactor::HANG_IN_SEND_OFFSETS;
pub(crate) use self::transactor::Transactor;

use std::time::Duration;

/// The exactly-once mode's settings; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// The producer's `transactional.id`: stable for one running instance
    /// and reused by its restart, unique among the instances running
    /// ([`ExactlyOnce::new`] makes `<group>.<instance>`).
    pub transactional_id: String,
    /// A transaction is committed at least this often while messages are
    /// settled (default 100 ms).
    pub commit_interval: Duration,
    /// … or once this many messages were settled since the last commit
    /// (default 10,000). The poll thread waits for each commit (a few
    /// milliseconds): at 1,000 the Kafka bench ran at half the at-least-once
    /// stack's rate, at 10,000 within a few percent of it.
    pub commit_every: usize,
    /// How long one transactional call (begin, offsets, commit, abort,
    /// `init_transactions`) may take (default 30 s). A call still blocked
    /// after this plus as much again (at most 10 s more) stops the source
    /// with a fatal error, `TRANSACTIONAL_CALL_STUCK`: librdkafka can block
    /// past the timeout when the group coordinator is lost
    /// (confluentinc/librdkafka#5456), and only a restart of the worker
    /// ends the open transaction then.
    pub call_timeout: Duration,
    /// `transaction.timeout.ms`: the broker aborts a transaction open this
    /// long (default 60 s; at least the producer's `message.timeout.ms`).
    pub transaction_timeout: Duration,
}

impl ExactlyOnce {
    /// The mode for `instance` of consumer group `group`: its
    /// `transactional.id` is `<group>.<instance>`.
    ///
    /// ```
    /// use backstop_kafka::ExactlyOnce;
    /// let mode = ExactlyOnce::new("billing", "worker-1");
    /// assert_eq!(mode.transactional_id, "billing.worker-1");
    /// ```
    pub fn new(group: &str, instance: &str) -> Self {
        ExactlyOnce {
            transactional_id: format!("{group}.{instance}"),
            commit_interval: Duration::from_millis(100),
            commit_every: 10_000,
            call_timeout: Duration::from_secs(30),
            transaction_timeout: Duration::from_secs(60),
        }
    }
}
