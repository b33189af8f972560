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
//! closes the channel ([`PublishError::MissingDestination`]), as does a
//! refused permission ([`PublishError::Unauthorized`]); the next publish
//! opens a new one, as it does after a broker restart. No confirm within
//! the timeout is [`PublishError::Timeout`].
//!
//! # Size limits
//!
//! Before sending, the body is checked against the configured maximum
//! ([`ConnectOptions::max_message_size`](crate::ConnectOptions::max_message_size))
//! and the encoded content header (properties and headers) against the
//! connection's negotiated `frame_max`: a message over either fails with
//! [`PublishError::TooLarge`] without being sent, instead of the broker
//! closing the channel or the whole connection.
//!
//! # A channel closed under other publishes
//!
//! When the broker closes the channel anyway (one message's missing
//! exchange, refused permission or size), every publish still waiting for
//! its confirm on that channel would fail with it. The others are
//! republished on a fresh channel (same properties, so the same message id)
//! instead of being reported as failed; only the message the close names
//! fails. A message is republished this way at most [`MAX_CHANNEL_CLOSES`]
//! times for channel closes, and as many times for closes of the whole
//! connection (the broker closes it with a hard error when a frame arrives
//! on a channel it has just closed, a race other publishes can lose).

use std::sync::Arc;
use std::time::Duration;

use backstop::Message;
use backstop::publish::{PublishError, Publisher};
use lapin::Channel;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;

use crate::connection::SharedConnection;
use crate::convert::properties_for;
use crate::error::{ACCESS_REFUSED, EncodeError, NOT_FOUND, PRECONDITION_FAILED, amqp_reply};
use crate::limits;

/// How often one publish is republished after its channel closed under it.
pub const MAX_CHANNEL_CLOSES: u32 = 3;

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
    /// The confirm-mode channel and its connection's `frame_max`.
    channel: tokio::sync::Mutex<Option<(Channel, u32)>>,
    max_message_size: usize,
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
        let max_message_size = connection.connector.options.max_message_size;
        RabbitPublisher {
            inner: Arc::new(Inner {
                connection,
                channel: tokio::sync::Mutex::new(None),
                max_message_size,
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

    /// The confirm-mode channel and its connection's `frame_max`, opened
    /// (or reopened after it died) on demand.
    async fn channel(&self) -> Result<(Channel, u32), PublishError> {
        let mut slot = self.inner.channel.lock().await;
        if let Some((channel, frame_max)) = slot.as_ref() {
            if channel.status().connected() {
                return Ok((channel.clone(), *frame_max));
            }
            tracing::debug!("publisher channel closed; opening a new one");
        }
        *slot = None;
        let mut refused = 0;
        loop {
            let connection = self.inner.connection.get().await.map_err(unavailable)?;
            let channel = self.inner.connection.channel().await.map_err(unavailable)?;
            match channel
                .confirm_select(ConfirmSelectOptions { nowait: false })
                .await
            {
                Ok(()) => {
                    let frame_max = connection.configuration().frame_max();
                    *slot = Some((channel.clone(), frame_max));
                    return Ok((channel, frame_max));
                }
                // A fresh channel can be in an error state at once while
                // the broker is still closing the one it replaces (for
                // another publish's sake): open another, a few times.
                // Or the connection closed under it (the broker closed it
                // for a frame sent on the channel it was closing): the next
                // turn reconnects.
                Err(error) if refused < MAX_CHANNEL_CLOSES => {
                    refused += 1;
                    tracing::debug!(%error, connected = connection.status().connected(), "a fresh publisher channel refused confirm mode; opening another");
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
    }

    /// Forgets `channel` if it is still the publisher's, so the next
    /// publish opens a fresh one.
    async fn discard(&self, channel: &Channel) {
        let mut slot = self.inner.channel.lock().await;
        if slot
            .as_ref()
            .is_some_and(|(held, _)| held.id() == channel.id())
        {
            *slot = None;
        }
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
        let size = message.payload.len();
        let timeout = self.confirm_timeout;
        let publish = async {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            // Channel closes for another publish's sake, and connection
            // closes (a hard error, such as a frame lapin sent on a channel
            // the broker had just closed), each within their own budget.
            let (mut closes, mut dropped) = (0, 0);
            loop {
                let (channel, frame_max) = self.channel().await?;
                limits::check(&properties, size, self.inner.max_message_size, frame_max)?;
                let sent = channel
                    .basic_publish(
                        exchange_name.clone(),
                        key.clone(),
                        options,
                        &message.payload,
                        properties.clone(),
                    )
                    .await;
                let confirmed = match sent {
                    Ok(confirm) => confirm.await,
                    Err(error) => Err(error),
                };
                match confirmed {
                    Ok(Confirmation::Ack(None)) => return Ok(()),
                    Ok(Confirmation::Ack(Some(_returned))) => {
                        return Err(PublishError::Unroutable(destination.clone()));
                    }
                    Ok(Confirmation::Nack(_)) => return Err(PublishError::Nacked),
                    Ok(Confirmation::NotRequested) => {
                        return Err(unavailable(std::io::Error::other(
                            "the publisher channel is not in confirm mode",
                        )));
                    }
                    // The channel closed under this message for another one's
                    // sake (or the connection dropped): publish it again on a
                    // fresh channel, with the same properties and id.
                    Err(error)
                        if closed_under(&error, &channel)
                            && !names_this_message(&error, exchange, size) =>
                    {
                        let count = if connection_closed(&error) {
                            &mut dropped
                        } else {
                            &mut closes
                        };
                        *count += 1;
                        if *count > MAX_CHANNEL_CLOSES {
                            return Err(classify(&error, exchange, &destination, size));
                        }
                        self.discard(&channel).await;
                        tracing::debug!(%error, %destination, "the publisher channel closed before this message was confirmed; republishing it on a fresh channel");
                    }
                    Err(error) => return Err(classify(&error, exchange, &destination, size)),
                }
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
        if let Some((channel, _)) = taken
            && channel.status().connected()
            && let Err(error) = channel.close(200, "OK".into()).await
        {
            tracing::debug!(%error, "closing the publisher channel failed");
        }
    }
}

/// True when `error` means the channel (or its connection) closed under the
/// publish: the channel is no longer open, or the broker closed it (or the
/// connection) with a reply, which lapin may report before the channel's
/// state changes.
/// True when `error` closed the whole connection (a hard AMQP error).
fn connection_closed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Hard(_))
    )
}

fn closed_under(error: &lapin::Error, channel: &Channel) -> bool {
    !channel.status().connected() || amqp_reply(error).is_some()
}

/// True when the broker's close names this message: its own exchange is
/// the missing (404) or refused (403) one, or its size is the one over the
/// limit (406). A close for anything else was caused by another publish on
/// the channel, or by the connection.
fn names_this_message(error: &lapin::Error, exchange: &str, size: usize) -> bool {
    let own_exchange = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    match amqp_reply(error) {
        Some((NOT_FOUND | ACCESS_REFUSED, text)) => text.contains(&format!("'{own_exchange}'")),
        Some((PRECONDITION_FAILED, text)) => text.contains(&format!("size {size} ")),
        _ => false,
    }
}

/// A publish failure from lapin's error: a missing exchange (404), a refused
/// permission (403), a message over the broker's size limit (406), else the
/// broker is unavailable.
fn classify(error: &lapin::Error, exchange: &str, destination: &str, size: usize) -> PublishError {
    let named = || {
        if exchange.is_empty() {
            destination.to_owned()
        } else {
            exchange.to_owned()
        }
    };
    match amqp_reply(error) {
        Some((NOT_FOUND, _)) => PublishError::MissingDestination(named()),
        Some((ACCESS_REFUSED, _)) => PublishError::Unauthorized(named()),
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
