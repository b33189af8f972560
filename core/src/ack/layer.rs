use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::Ack;
use crate::retry::RetrySink;

/// Applies [`Ack`].
///
/// Used alone: the delivery is acked only once the inner service settled
/// it with an [`Outcome`](crate::outcome::Outcome); an error is nacked
/// (with requeue) after the jittered delay instead.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use backstop::ack::{AckLayer, Settled};
/// use backstop::delivery::{Acker, Delivery, Received};
/// use backstop::error::{AckError, Error};
/// use backstop::outcome::Outcome;
/// use backstop::Message;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// /// Records how each delivery was settled.
/// struct Recorded(Arc<Mutex<Vec<&'static str>>>);
///
/// #[async_trait::async_trait]
/// impl Acker for Recorded {
///     async fn ack(self: Box<Self>) -> Result<(), AckError> {
///         self.0.lock().unwrap().push("ack");
///         Ok(())
///     }
///     async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AckError> {
///         self.0.lock().unwrap().push(if requeue { "nack, requeue" } else { "nack" });
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let settled = Arc::new(Mutex::new(Vec::new()));
/// let acking = AckLayer::new(Duration::from_millis(1)).layer(service_fn(|received: Received| async move {
///     if received.message.payload.is_empty() {
///         Err(Error::Busy { key: "k".into() })
///     } else {
///         Ok(Outcome::Handled)
///     }
/// }));
///
/// let done = Delivery::new(Message::new("order"), Recorded(Arc::clone(&settled)));
/// let outcome = acking.clone().oneshot(done).await.expect("acked");
/// assert!(matches!(outcome, Settled::Acked(Outcome::Handled)));
///
/// let not_now = Delivery::new(Message::new(""), Recorded(Arc::clone(&settled)));
/// let outcome = acking.oneshot(not_now).await.expect("nacked");
/// assert!(matches!(outcome, Settled::Nacked(_)));
/// assert_eq!(*settled.lock().unwrap(), ["ack", "nack, requeue"]);
/// # }
/// ```
#[derive(Clone)]
pub struct AckLayer {
    nack_delay: Duration,
    postpone: Option<Arc<dyn RetrySink>>,
}

impl std::fmt::Debug for AckLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckLayer")
            .field("nack_delay", &self.nack_delay)
            .field("postpone", &self.postpone.is_some())
            .finish()
    }
}

impl AckLayer {
    /// Errors are nacked after a jittered wait of about `nack_delay`.
    pub const fn new(nack_delay: Duration) -> Self {
        AckLayer {
            nack_delay,
            postpone: None,
        }
    }

    /// Postpones errors that spend no attempt (and deliveries at their
    /// deadline) through `sink`: a confirmed copy with the same attempt
    /// count, then an ack. Where the sink refuses (a classic queue), they
    /// are nacked as before.
    #[must_use]
    pub fn postpone_through(mut self, sink: Arc<dyn RetrySink>) -> Self {
        self.postpone = Some(sink);
        self
    }
}

impl Default for AckLayer {
    fn default() -> Self {
        AckLayer::new(Duration::from_secs(1))
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = Ack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let ack = Ack::new(inner, self.nack_delay);
        match &self.postpone {
            Some(sink) => ack.postpone_through(Arc::clone(sink)),
            None => ack,
        }
    }
}
