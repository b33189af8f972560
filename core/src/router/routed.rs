//! [`Routed`]: the payload a [`Router`](super::Router) consumes.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::payload::{DecodeError, Payload};

/// The decoded value of a route's payload type, kept for the next attempt.
type Decoded = Result<Box<dyn Any + Send + Sync>, DecodeError>;

/// A message body whose type is not known until it is routed: the payload
/// type of a stack built around a [`Router`](super::Router)
/// (`StackBuilder::<Routed>`).
///
/// Decoding a `Routed` at the top of the stack shares the message's buffer
/// and never fails; the router decodes the body as its route's payload type
/// on the first attempt and keeps that value, so a retried message is
/// decoded once, not once per attempt (each attempt gets a copy that
/// shares the kept value: [`Payload::shared_copy`]). `Routed` has no
/// idempotency key ([`Payload::key`] is `None`): deduplicate a routed stack by [`KeySource::MessageId`] or
/// [`KeySource::Header`](crate::idempotency::KeySource::Header).
///
/// [`KeySource::MessageId`]: crate::idempotency::KeySource::MessageId
///
/// ```
/// use backstop::Payload;
/// use backstop::router::Routed;
///
/// let routed = Routed::decode(br#"{"order_id":"o-1"}"#).unwrap();
/// assert_eq!(&routed.body()[..], br#"{"order_id":"o-1"}"#);
/// assert_eq!(routed.key(), None);
/// ```
#[derive(Clone)]
pub struct Routed {
    body: Bytes,
    decoded: Arc<OnceLock<Decoded>>,
}

impl Routed {
    /// A body not decoded yet.
    pub fn new(body: Bytes) -> Self {
        Routed {
            body,
            decoded: Arc::default(),
        }
    }

    /// The body, as the broker delivered it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as `P`: decoded on the first call and kept for the copies
    /// of this value the later attempts get.
    pub(crate) fn decoded<P: Payload>(&self) -> Result<P, DecodeError> {
        let decoded = self.decoded.get_or_init(|| {
            P::decode_shared(&self.body).map(|p| Box::new(p) as Box<dyn Any + Send + Sync>)
        });
        match decoded {
            Ok(value) => match value.downcast_ref::<P>() {
                Some(payload) => Ok(payload.clone()),
                // Routed as another type before (a type function that
                // changed its answer): decode afresh, keep the first.
                None => P::decode_shared(&self.body),
            },
            Err(error) => Err(error.clone()),
        }
    }
}

impl fmt::Debug for Routed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routed")
            .field("body_len", &self.body.len())
            .field("decoded", &self.decoded.get().map(Result::is_ok))
            .finish()
    }
}

impl Payload for Routed {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Routed::new(Bytes::copy_from_slice(bytes)))
    }

    fn decode_shared(bytes: &Bytes) -> Result<Self, DecodeError> {
        Ok(Routed::new(bytes.clone()))
    }

    /// A copy sharing the body and the cache of its decoded value: every
    /// attempt of a message reads the value its first attempt decoded.
    fn shared_copy(&self) -> Option<Self> {
        Some(self.clone())
    }
}
