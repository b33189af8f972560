//! The back-ends kept here: a confirmed [`Publisher`] ([`confirmed`]) and
//! [`Collected`], which keeps an attempt's messages for a wrapper.

use std::sync::Arc;

use super::{Outgoing, PublishFailed};
use crate::message::Message;
use crate::publish::Publisher;

/// A [`Publisher`] as a back-end.
struct Direct<P>(P);

#[async_trait::async_trait]
impl<P: Publisher> Outgoing for Direct<P> {
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        self.0
            .publish(destination, &message)
            .await
            .map_err(|source| PublishFailed::Publish {
                destination: destination.to_owned(),
                source,
            })
    }
}

/// A back-end that keeps what one attempt publishes, for a wrapper that
/// decides afterwards where it goes (into a source's transaction once the
/// attempt succeeded; nowhere if it failed).
#[derive(Debug, Default)]
pub struct Collected(std::sync::Mutex<Vec<(String, Message)>>);

impl Collected {
    /// Takes what was published so far, `(destination, message)` in order.
    pub fn take(&self) -> Vec<(String, Message)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl Outgoing for Collected {
    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishFailed> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((destination.to_owned(), message));
        Ok(())
    }
}

/// A confirmed [`Publisher`] as a back-end: each publish returns after the
/// broker's confirm (what [`PublishLayer::new`](super::PublishLayer::new) uses).
pub fn confirmed(publisher: impl Publisher) -> Arc<dyn Outgoing> {
    Arc::new(Direct(publisher))
}
