//! [`Topology`]: the safe shape of a consumed queue, declared in one call.
//!
//! A quorum topology for queue `q` declares:
//!
//! | Name | What | Arguments |
//! |---|---|---|
//! | `q` | quorum queue, durable | `x-delivery-limit` above backstop's maximum attempts, `x-dead-letter-exchange=q.dlx`, `x-dead-letter-strategy=at-least-once`, `x-overflow=reject-publish` |
//! | `q.dlx` | fanout exchange, durable | bound to `q.dlq` |
//! | `q.dlq` | quorum queue, durable | no delivery limit, so reading it never dead-letters it (on RabbitMQ 4, see [`Topology::rabbitmq_4`]) |
//! | `q.retry.<tier>` | quorum queue per delay tier (`5s`, `30s`, `5m` …) | `x-message-ttl`, dead-lettered at-least-once back to `q` through the default exchange (`x-dead-letter-routing-key=q`), `x-overflow=reject-publish` |
//!
//! backstop writes its own dead letters (with the failure headers) to
//! `q.dlq` through the default exchange; the DLX catches what the broker
//! dead-letters by itself (the delivery limit, a consumer's reject). One
//! delay queue per tier, because TTLs expire only from the head of a queue.
//!
//! A classic topology ([`Topology::classic`]) declares durable classic
//! queues `q` and `q.dlq` and the DLX, without delivery limit or
//! at-least-once dead-lettering, and has **no broker-delayed retry**: it
//! cannot have tiers, and a [`RabbitRetrySink`](crate::RabbitRetrySink)
//! refuses its messages with [`SinkError::Unsupported`](backstop::error::SinkError::Unsupported),
//! so every retry is slept in process.

use std::time::Duration;

use backstop::attempt;
/// The DLQ of a queue: `<queue>.dlq` (one rule with the in-memory broker).
pub use backstop::dead_letter::dlq_name;
/// A delay's tier name (the last part of its queue's name): one rule for
/// every broker.
pub use backstop::retry::tier_name;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::error::{NOT_FOUND, PRECONDITION_FAILED, TopologyError, amqp_reply};

/// The kind of queue a topology declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// Replicated, durable, with a delivery limit and at-least-once dead-lettering.
    Quorum,
    /// A durable classic queue: no delivery limit, no broker-delayed retry.
    Classic,
}

/// One broker-delayed retry tier: a delay and the queue that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTier {
    name: String,
    delay: Duration,
}

impl RetryTier {
    /// A tier of `delay`, named by [`tier_name`].
    pub fn new(delay: Duration) -> Self {
        RetryTier {
            name: tier_name(delay),
            delay,
        }
    }

    /// The tier's name (`5s`, `30s`, `5m`, `1h`, `250ms`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long a message waits in this tier.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The delay queue of this tier for `queue`: `<queue>.retry.<tier>`.
    pub fn queue_for(&self, queue: &str) -> String {
        format!("{queue}.retry.{}", self.name)
    }
}

/// The dead-letter exchange of a queue: `<queue>.dlx`.
pub fn dlx_name(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// The shape of one consumed queue, its DLQ and its delay tiers; see the [module docs](self).
///
/// Pure: what the declare step will ask the broker for, checked before any
/// connection.
///
/// ```
/// use std::time::Duration;
///
/// use backstop_rabbitmq::Topology;
/// use lapin::types::{AMQPValue, ShortString};
///
/// let topology = Topology::quorum("orders")
///     .retry_tiers([Duration::from_secs(10), Duration::from_secs(60)])
///     .delivery_limit(20);
/// assert_eq!(topology.dlq(), "orders.dlq");
///
/// let arguments = topology.queue_arguments();
/// let arguments = arguments.inner();
/// assert_eq!(
///     arguments.get(&ShortString::from("x-queue-type")),
///     Some(&AMQPValue::LongString("quorum".into()))
/// );
/// assert!(arguments.contains_key(&ShortString::from("x-dead-letter-exchange")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    queue: String,
    kind: QueueKind,
    tiers: Vec<RetryTier>,
    max_attempts: u32,
    delivery_limit: Option<u32>,
    rabbitmq_4: bool,
    adopt: bool,
}

impl Topology {
    /// A quorum queue `queue` with its DLQ, no delay tiers yet, for backstop's
    /// default of 5 attempts.
    pub fn quorum(queue: impl Into<String>) -> Self {
        Topology {
            queue: queue.into(),
            kind: QueueKind::Quorum,
            tiers: Vec::new(),
            max_attempts: backstop::RetryPolicy::default().max_attempts,
            delivery_limit: None,
            rabbitmq_4: false,
            adopt: false,
        }
    }

    /// Adopts a queue someone else declared: [`RabbitMq::declare`](crate::RabbitMq::declare)
    /// then checks that the queue exists and declares only its companions
    /// (the DLQ, the DLX and the delay queues), never the queue itself, so
    /// its arguments stay the owner's. Dead letters and retries work as
    /// usual (backstop writes them itself); the broker's own dead-lettering
    /// (its delivery limit) reaches the DLQ only if the owner set
    /// `x-dead-letter-exchange` to [`dlx`](Self::dlx).
    #[must_use]
    pub fn adopt(mut self) -> Self {
        self.adopt = true;
        self
    }

    /// A durable classic queue `queue` with its DLQ; no broker-delayed retry.
    pub fn classic(queue: impl Into<String>) -> Self {
        Topology {
            kind: QueueKind::Classic,
            ..Topology::quorum(queue)
        }
    }

    /// Adds a delay queue per tier (quorum only). Tiers are kept sorted by
    /// delay, duplicates dropped.
    #[must_use]
    pub fn retry_tiers(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.tiers.extend(delays.into_iter().map(RetryTier::new));
        self.tiers.sort_by_key(RetryTier::delay);
        self.tiers.dedup_by(|a, b| a.name == b.name);
        self
    }

    /// The most attempts backstop makes (the retry policy's `max_attempts`);
    /// the default delivery limit is derived from it.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(attempt::FIRST);
        self
    }

    /// Sets `x-delivery-limit` (quorum only); it must be above the maximum attempts.
    #[must_use]
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = Some(limit);
        self
    }

    /// Declares the DLQ for RabbitMQ 4 or later, where quorum queues have a
    /// default delivery limit of 20: the DLQ gets `x-delivery-limit = -1`
    /// (unlimited there). Do not use it on RabbitMQ 3, which reads -1 as
    /// "dead-letter on the first return" and, the DLQ having no DLX, drops it.
    #[must_use]
    pub fn rabbitmq_4(mut self) -> Self {
        self.rabbitmq_4 = true;
        self
    }

    /// The consumed queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Quorum or classic.
    pub fn kind(&self) -> QueueKind {
        self.kind
    }

    /// The DLQ: `<queue>.dlq`.
    pub fn dlq(&self) -> String {
        dlq_name(&self.queue)
    }

    /// The dead-letter exchange: `<queue>.dlx`.
    pub fn dlx(&self) -> String {
        dlx_name(&self.queue)
    }

    /// The delay tiers, shortest first.
    pub fn tiers(&self) -> &[RetryTier] {
        &self.tiers
    }

    /// The broker's delivery limit: the configured one, else
    /// `max(4 × max attempts, 50)` (nacks of deferred messages count as deliveries too).
    pub fn effective_delivery_limit(&self) -> u32 {
        self.delivery_limit
            .unwrap_or_else(|| self.max_attempts.saturating_mul(4).max(50))
    }

    /// The tier a retry `delay` goes to: the shortest whose delay is at least
    /// `delay`, else the longest. `None` without tiers.
    pub fn tier_for(&self, delay: Duration) -> Option<&RetryTier> {
        self.tiers
            .iter()
            .find(|tier| tier.delay >= delay)
            .or_else(|| self.tiers.last())
    }

    /// Checks the topology without the broker.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let too_long = [self.queue.clone(), self.dlq(), self.dlx()]
            .into_iter()
            .chain(self.tiers.iter().map(|t| t.queue_for(&self.queue)))
            .find(|name| name.len() > 255);
        if let Some(name) = too_long {
            return Err(TopologyError::NameTooLong { name });
        }
        if self.kind == QueueKind::Classic && !self.tiers.is_empty() {
            return Err(TopologyError::TiersNeedQuorum {
                queue: self.queue.clone(),
            });
        }
        let limit = self.effective_delivery_limit();
        if self.kind == QueueKind::Quorum && limit <= self.max_attempts {
            return Err(TopologyError::DeliveryLimitTooLow {
                queue: self.queue.clone(),
                delivery_limit: limit,
                max_attempts: self.max_attempts,
            });
        }
        if let Some(tier) = self
            .tiers
            .iter()
            .find(|t| t.delay.is_zero() || t.delay.as_millis() > u128::from(u32::MAX))
        {
            return Err(TopologyError::InvalidTier {
                queue: self.queue.clone(),
                delay: tier.delay,
            });
        }
        Ok(())
    }

    /// The arguments of the consumed queue.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), text(&self.dlx()));
        match self.kind {
            QueueKind::Quorum => {
                args.insert("x-queue-type".into(), text("quorum"));
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(self.effective_delivery_limit())),
                );
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                args.insert("x-overflow".into(), text("reject-publish"));
            }
            QueueKind::Classic => {
                args.insert("x-queue-type".into(), text("classic"));
            }
        }
        args
    }

    /// The arguments of the DLQ: no delivery limit (so listing it never
    /// drops it; see [`Topology::rabbitmq_4`]), no dead-lettering.
    pub fn dlq_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.kind {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        };
        args.insert("x-queue-type".into(), text(kind));
        if self.kind == QueueKind::Quorum && self.rabbitmq_4 {
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(-1));
        }
        args
    }

    /// The arguments of one delay queue.
    pub fn tier_arguments(&self, tier: &RetryTier) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(tier.delay.as_millis()).unwrap_or(i64::MAX)),
        );
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(&self.queue));
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args
    }

    /// Declares everything on `channel` (which the broker closes on a refusal).
    pub(crate) async fn declare_on(&self, channel: &Channel) -> Result<(), TopologyError> {
        self.validate()?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dlq = self.dlq();
        let dlx = self.dlx();
        declare_queue(channel, &dlq, durable, self.dlq_arguments()).await?;
        channel
            .exchange_declare(
                short(&dlx)?,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error(&dlx, e))?;
        channel
            .queue_bind(
                short(&dlq)?,
                short(&dlx)?,
                short(&dlq)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error(&dlq, e))?;
        if self.adopt {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(short(&self.queue)?, passive, FieldTable::default())
                .await
                .map_err(|e| match amqp_reply(&e) {
                    Some((NOT_FOUND, _)) => TopologyError::AdoptedQueueMissing {
                        queue: self.queue.clone(),
                    },
                    _ => broker_error(&self.queue, e),
                })?;
        } else {
            declare_queue(channel, &self.queue, durable, self.queue_arguments()).await?;
        }
        for tier in &self.tiers {
            declare_queue(
                channel,
                &tier.queue_for(&self.queue),
                durable,
                self.tier_arguments(tier),
            )
            .await?;
        }
        Ok(())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

fn short(name: &str) -> Result<ShortString, TopologyError> {
    ShortString::try_new(name).map_err(|_| TopologyError::NameTooLong {
        name: name.to_owned(),
    })
}

fn broker_error(name: &str, source: lapin::Error) -> TopologyError {
    match amqp_reply(&source) {
        Some((PRECONDITION_FAILED, reason)) => TopologyError::Mismatch {
            name: name.to_owned(),
            reason,
        },
        _ => TopologyError::Broker {
            name: name.to_owned(),
            source,
        },
    }
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<(), TopologyError> {
    channel
        .queue_declare(short(name)?, options, args)
        .await
        .map(drop)
        .map_err(|e| broker_error(name, e))
}

#[cfg(test)]
mod tests;
