//! [`RabbitPublisher`]: confirmed, mandatory, persistent publishing.
//!
//! # Destinations
//!
//! A destination is a queue name, published through the default exchange
//! (`"orders"` reaches the queue `orders`), or `"exchange/routing-key"` to
//! publish through a named exchange: the text before the first `/` is the
//! exchange, the rest the routing key. A queue whose name contains `/` is
//! reached with a leading slash (`"/a/b"` is the queue `a/b` through the
//! default exchange), or with [`RabbitPublisher::publish_to`].
//!
//! # What counts as published
//!
//! Only a broker ack. The channel is in confirm mode; every publish is
//! `mandatory`, so a message no queue is bound for comes back as returned
//! and fails with [`PublishError::Unroutable`] even though the broker acked
//! it. A nack fails with [`PublishError::Nacked`] (a queue with
//! `x-overflow=reject-publish` that is full nacks). A missing exchange
//! closes the channel ([`PublishError::MissingDestination`]); the next
//! publish opens a new one, as it does after a broker restart. No confirm
//! within the timeout is [`PublishError::Timeout`].

use std::sync::Arc;
use std::time::Duration;

use backstop::{Message, PublishError, Publisher};
use lapin::Channel;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;

use crate::connection::SharedConnection;
use crate::convert::properties_for;
use crate::error::{EncodeError, NOT_FOUND, PRECONDITION_FAILED, amqp_reply};

/// Splits a destination into exchange and routing key; see the [module docs](self).
pub fn parse_destination(destination: &str) -> (&str, &str) {
    match destination.split_once('/') {
        Some((exchange, routing_key)) => (exchange, routing_key),
        None => ("", destination),
    }
}

/// A confirmed publisher on its own channel; cheap to clone (clones share the channel).
#[derive(Clone)]
pub struct RabbitPublisher {
    inner: Arc<Inner>,
    confirm_timeout: Duration,
}

struct Inner {
    connection: Arc<SharedConnection>,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl std::fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("confirm_timeout", &self.confirm_timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> PublishError {
    PublishError::Unavailable(Box::new(error))
}

impl RabbitPublisher {
    pub(crate) fn new(connection: Arc<SharedConnection>) -> Self {
        let confirm_timeout = connection.connector.options.confirm_timeout;
        RabbitPublisher {
            inner: Arc::new(Inner {
                connection,
                channel: tokio::sync::Mutex::new(None),
            }),
            confirm_timeout,
        }
    }

    /// This publisher with another confirm timeout (shares the channel).
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// The confirm-mode channel, opened (or reopened after it died) on demand.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.inner.channel.lock().await;
        if let Some(channel) = slot.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            tracing::debug!("publisher channel closed; opening a new one");
        }
        *slot = None;
        let channel = self.inner.connection.channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions { nowait: false })
            .await
            .map_err(unavailable)?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes `message` through `exchange` (`""` for the default exchange)
    /// with `routing_key`, and waits for the broker's confirm.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), PublishError> {
        let destination = if exchange.is_empty() {
            routing_key.to_owned()
        } else {
            format!("{exchange}/{routing_key}")
        };
        let too_long = |part: &str| {
            PublishError::Invalid(EncodeError::DestinationTooLong(part.to_owned()).to_string())
        };
        let exchange_name = ShortString::try_new(exchange).map_err(|_| too_long(exchange))?;
        let key = ShortString::try_new(routing_key).map_err(|_| too_long(routing_key))?;
        let properties =
            properties_for(message).map_err(|e| PublishError::Invalid(e.to_string()))?;
        let timeout = self.confirm_timeout;
        let publish = async {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let mut retried = false;
            let confirm = loop {
                let channel = self.channel().await?;
                match channel
                    .basic_publish(
                        exchange_name.clone(),
                        key.clone(),
                        options,
                        &message.payload,
                        properties.clone(),
                    )
                    .await
                {
                    Ok(confirm) => break confirm,
                    // The channel died before the message left: safe to try once on a new one.
                    Err(_) if !retried && !channel.status().connected() => retried = true,
                    Err(error) => {
                        return Err(classify(
                            &error,
                            exchange,
                            &destination,
                            message.payload.len(),
                        ));
                    }
                }
            };
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_returned))) => {
                    Err(PublishError::Unroutable(destination.clone()))
                }
                Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
                Ok(Confirmation::NotRequested) => Err(unavailable(std::io::Error::other(
                    "the publisher channel is not in confirm mode",
                ))),
                Err(error) => Err(classify(
                    &error,
                    exchange,
                    &destination,
                    message.payload.len(),
                )),
            }
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(timeout)),
        }
    }

    /// Publishes `message` to `queue` through the default exchange and waits for the confirm.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        message: &Message,
    ) -> Result<(), PublishError> {
        self.publish_to("", queue, message).await
    }

    /// Closes the publisher's channel (the next publish opens a new one).
    pub async fn close(&self) {
        let taken = self.inner.channel.lock().await.take();
        if let Some(channel) = taken
            && channel.status().connected()
            && let Err(error) = channel.close(200, "OK".into()).await
        {
            tracing::debug!(%error, "closing the publisher channel failed");
        }
    }
}

/// A publish failure from lapin's error: a missing exchange (404), a message
/// over the broker's size limit (406), else the broker is unavailable.
fn classify(error: &lapin::Error, exchange: &str, destination: &str, size: usize) -> PublishError {
    match amqp_reply(error) {
        Some((NOT_FOUND, _)) => PublishError::MissingDestination(if exchange.is_empty() {
            destination.to_owned()
        } else {
            exchange.to_owned()
        }),
        Some((PRECONDITION_FAILED, text)) if text.contains("size") => {
            PublishError::TooLarge { size }
        }
        _ => unavailable(error.clone()),
    }
}

#[async_trait::async_trait]
impl Publisher for RabbitPublisher {
    /// Publishes to `destination` (a queue, or `exchange/routing-key`; see the
    /// [module docs](self)) and waits for the confirm.
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        let (exchange, routing_key) = parse_destination(destination);
        self.publish_to(exchange, routing_key, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_split_at_the_first_slash() {
        assert_eq!(parse_destination("orders"), ("", "orders"));
        assert_eq!(
            parse_destination("events/order.placed"),
            ("events", "order.placed")
        );
        assert_eq!(parse_destination("/a/b"), ("", "a/b"));
        assert_eq!(parse_destination("ex/"), ("ex", ""));
    }
}
