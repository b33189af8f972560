//! The DLQ and delayed-retry writers: [`KafkaDeadLetterSink`] and [`KafkaRetrySink`].
//!
//! Both route by the message's origin ([`Meta::origin`](backstop::message::Meta::origin):
//! the topic it was consumed from, or for a copy consumed from a retry topic
//! the source topic from the source's own table; never a header), per
//! consumer group, so one group's dead letters and retries never reach
//! another group: `<topic>.<group>.dlq` and `<topic>.<group>.retry.<tier>`.
//! Both write `x-backstop-group` (informational, rewritten on every hop) and
//! keep the key, and resolve only on the broker's delivery report.

use std::time::Duration;

use backstop::dead_letter::DeadLetterSink;
use backstop::error::SinkError;
use backstop::publish::Publisher;
use backstop::retry::RetrySink;
use backstop::transaction::InTransaction;
use backstop::{Message, wire};

use crate::names::{dlq_topic, retry_topic};
use crate::{KafkaPublisher, RetryTiers};

async fn send(
    publisher: &KafkaPublisher,
    destination: String,
    message: &Message,
) -> Result<(), SinkError> {
    publisher
        .publish(&destination, message)
        .await
        .map_err(|source| SinkError::Publish {
            destination,
            source,
        })
}

/// Writes dead letters to `<topic>.<group>.dlq` (or the stack's override).
#[derive(Clone, Debug)]
pub struct KafkaDeadLetterSink {
    publisher: KafkaPublisher,
    group: String,
}

impl KafkaDeadLetterSink {
    /// A sink for `group`'s dead letters, written with `publisher`.
    pub fn new(publisher: KafkaPublisher, group: impl Into<String>) -> Self {
        KafkaDeadLetterSink {
            publisher,
            group: group.into(),
        }
    }
}

impl KafkaDeadLetterSink {
    /// The letter's topic (`destination`, else its origin's DLQ), with the
    /// group stamped on it.
    fn addressed(&self, letter: &mut Message, destination: Option<&str>) -> String {
        letter
            .headers
            .insert(wire::GROUP.to_owned(), self.group.clone());
        destination.map_or_else(
            || dlq_topic(letter.meta.origin(), &self.group),
            str::to_owned,
        )
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for KafkaDeadLetterSink {
    async fn dead_letter(
        &self,
        mut letter: Message,
        destination: Option<&str>,
    ) -> Result<(), SinkError> {
        let destination = self.addressed(&mut letter, destination);
        send(&self.publisher, destination, &letter).await
    }

    /// Adds the letter to the delivery's transaction (exactly-once mode):
    /// it is written with the commit that covers the delivery's offset.
    async fn dead_letter_in(
        &self,
        mut letter: Message,
        destination: Option<&str>,
        transaction: &InTransaction,
    ) -> Result<(), SinkError> {
        let destination = self.addressed(&mut letter, destination);
        transaction.0.produce(&destination, letter)
    }
}

/// Republishes delayed-retry copies to the retry topic of their delay tier.
///
/// The copy already carries `x-backstop-due` and the incremented attempt
/// (the retry layer built it). Per-key order is kept across such a retry
/// only with [`KafkaConfig::ordered_retries`](crate::KafkaConfig::ordered_retries);
/// see [`retry`](crate::retry).
#[derive(Clone, Debug)]
pub struct KafkaRetrySink {
    publisher: KafkaPublisher,
    group: String,
    tiers: RetryTiers,
}

impl KafkaRetrySink {
    /// A sink for `group`'s retries over `tiers`, written with `publisher`.
    pub fn new(publisher: KafkaPublisher, group: impl Into<String>, tiers: RetryTiers) -> Self {
        KafkaRetrySink {
            publisher,
            group: group.into(),
            tiers,
        }
    }

    /// The copy's topic, with the group stamped on it.
    fn addressed(&self, copy: &mut Message, delay: Duration) -> Result<String, SinkError> {
        let destination = self.destination(copy, delay).ok_or_else(|| {
            SinkError::Unsupported(format!(
                "no retry tiers are configured for group {:?}; configure KafkaConfig::retry_tiers or raise the retry policy's in-process limit",
                self.group
            ))
        })?;
        copy.headers
            .insert(wire::GROUP.to_owned(), self.group.clone());
        Ok(destination)
    }

    /// The topic a copy delayed by `delay` goes to, if any tier exists.
    pub fn destination(&self, message: &Message, delay: Duration) -> Option<String> {
        let tier = self.tiers.pick(delay)?;
        Some(retry_topic(message.meta.origin(), &self.group, tier))
    }
}

#[async_trait::async_trait]
impl RetrySink for KafkaRetrySink {
    async fn retry_later(&self, mut copy: Message, delay: Duration) -> Result<(), SinkError> {
        let destination = self.addressed(&mut copy, delay)?;
        send(&self.publisher, destination, &copy).await
    }

    /// Adds the copy to the delivery's transaction (exactly-once mode).
    async fn retry_later_in(
        &self,
        mut copy: Message,
        delay: Duration,
        transaction: &InTransaction,
    ) -> Result<(), SinkError> {
        let destination = self.addressed(&mut copy, delay)?;
        transaction.0.produce(&destination, copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryTier;

    #[test]
    fn names_are_per_topic_and_group() {
        assert_eq!(dlq_topic("orders", "billing"), "orders.billing.dlq");
        let tier = RetryTier::new(Duration::from_secs(30));
        assert_eq!(
            retry_topic("orders", "billing", &tier),
            "orders.billing.retry.30s"
        );
    }

    #[test]
    fn routing_follows_where_the_message_was_consumed_not_its_headers() {
        let publisher = KafkaPublisher::new(&crate::KafkaConfig::new("127.0.0.1:1", "billing"))
            .expect("a producer is created without connecting");
        let sink = KafkaRetrySink::new(publisher, "billing", RetryTiers::default());
        let mut m = Message::new("x").with_header(wire::ORIGINAL_SOURCE, "payments");
        m.meta.source = "orders".into();
        let five = Duration::from_secs(5);
        assert_eq!(
            sink.destination(&m, five).as_deref(),
            Some("orders.billing.retry.5s")
        );
        // A hop consumed from a retry topic: the source's own table names the origin.
        m.meta.source = "orders.billing.retry.5s".into();
        m.meta.retry_of = Some("orders".into());
        assert_eq!(
            sink.destination(&m, Duration::from_secs(30)).as_deref(),
            Some("orders.billing.retry.30s")
        );
    }
}
