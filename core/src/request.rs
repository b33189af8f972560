//! [`Request`]: a message decoded once, as it travels through the layers.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attempt;
use crate::cancellation::Cancellation;
use crate::context::{Context, Extensions};
use crate::message::Message;
use crate::payload::{DecodeError, Payload};

/// A message decoded once at the top of the stack. The layers lend it to
/// each attempt; a wrapper that needs its own copy clones it (the payload
/// with it).
#[derive(Debug)]
pub struct Request<T> {
    message: Arc<Message>,
    payload: Result<T, DecodeError>,
    /// The payload was moved to an attempt's handler ([`Request::payload_for_attempt`]):
    /// `payload` holds a placeholder until a later attempt decodes it again.
    lent: bool,
    payload_key: Option<String>,
    attempt: u32,
    confirmed_attempt: u32,
    cancel: Cancellation,
    deadline: Option<Instant>,
    /// Per-attempt values for the handler's [`Context`].
    pub extensions: Extensions,
}

/// What a request holds in place of a payload it no longer has (moved to
/// an attempt, or to a request taken for a user's layer).
fn no_payload<T>() -> Result<T, DecodeError> {
    Err(DecodeError::Invalid {
        type_name: std::any::type_name::<T>(),
        reason: String::new(),
    })
}

impl<T: Clone> Clone for Request<T> {
    fn clone(&self) -> Self {
        Request {
            message: Arc::clone(&self.message),
            payload: self.payload.clone(),
            lent: self.lent,
            payload_key: self.payload_key.clone(),
            attempt: self.attempt,
            confirmed_attempt: self.confirmed_attempt,
            cancel: self.cancel.clone(),
            deadline: self.deadline,
            extensions: self.extensions.clone(),
        }
    }
}

impl<T: Payload> Request<T> {
    /// Decodes `message` (at most `max_payload` bytes) and extracts its key
    /// (the [`decoded`](crate::lifecycle) lifecycle event).
    pub fn decode(
        message: impl Into<Arc<Message>>,
        cancel: impl Into<Cancellation>,
        max_payload: Option<usize>,
    ) -> Self {
        let message = message.into();
        let cancel = cancel.into();
        let payload = match max_payload {
            _ if message.meta.conversion_error.is_some() => Err(DecodeError::Invalid {
                type_name: std::any::type_name::<T>(),
                reason: message.meta.conversion_error.clone().unwrap_or_default(),
            }),
            Some(max) if message.payload.len() > max => Err(DecodeError::TooLarge {
                size: message.payload.len(),
                max,
            }),
            _ => T::decode_shared(&message.payload),
        };
        let payload_key = payload.as_ref().ok().and_then(T::key);
        let attempt = message.meta.attempt.max(attempt::FIRST);
        // A copy consumed from backstop's own retry topic carries a count
        // backstop wrote; anything else is a claim (see `attempt::admit`).
        let confirmed_attempt = if message.meta.retry_of.is_some() {
            attempt
        } else {
            attempt::FIRST
        };
        crate::lifecycle::decoded(&message.meta, attempt, payload.as_ref().err());
        Request {
            message,
            payload,
            lent: false,
            payload_key,
            attempt,
            confirmed_attempt,
            cancel,
            deadline: None,
            extensions: Extensions::default(),
        }
    }

    /// The payload for one attempt of the stack's handler: moved out of the
    /// request the first time (the handler gets it without a copy), and
    /// decoded again from the message for a later attempt (a retry, the
    /// rare case; the first decode succeeded, so this one does too for a
    /// payload type whose decoding depends only on the bytes). A type with
    /// a [`shared_copy`](Payload::shared_copy) gives each attempt one and
    /// stays. A payload that did not decode stays in the request and its
    /// error is returned.
    pub(crate) fn payload_for_attempt(&mut self) -> Result<T, DecodeError> {
        if self.lent {
            return T::decode_shared(&self.message.payload);
        }
        match &self.payload {
            Err(error) => Err(error.clone()),
            Ok(payload) => {
                if let Some(copy) = payload.shared_copy() {
                    return Ok(copy);
                }
                self.lent = true;
                std::mem::replace(&mut self.payload, no_payload())
            }
        }
    }
}

impl<T> Request<T> {
    /// When the delivery must be settled by ([`Delivery::deadline`](crate::delivery::Delivery::deadline)):
    /// the retry layer hands a retry that would sleep past it to the broker.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Sets the deadline the delivery must be settled by.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The shared message.
    pub fn message_arc(&self) -> &Arc<Message> {
        &self.message
    }

    /// The decoded payload, or why it did not decode.
    ///
    /// Inside the stack's pipeline the payload is moved to the handler for
    /// its attempt (see `payload_for_attempt`); a request a layer is given
    /// (a clone, or one taken for a user's layer) always has its own.
    pub fn payload(&self) -> Result<&T, &DecodeError> {
        self.payload.as_ref()
    }

    /// The request, moved out for a service that takes it by value (a
    /// user's tower layer inside the stack's pipeline, which owns the
    /// request and lends it to each step). What stays behind is hollow —
    /// the same message, attempt and token, but no payload, key or
    /// extensions — and is not to be read as the request again.
    pub(crate) fn take(&mut self) -> Self {
        let hollow = Request {
            message: Arc::clone(&self.message),
            payload: no_payload(),
            lent: false,
            payload_key: None,
            attempt: self.attempt,
            confirmed_attempt: self.confirmed_attempt,
            cancel: self.cancel.clone(),
            deadline: self.deadline,
            extensions: Extensions::default(),
        };
        std::mem::replace(self, hollow)
    }

    /// The key the payload type extracted, if any.
    pub fn payload_key(&self) -> Option<&str> {
        self.payload_key.as_deref()
    }

    /// The 1-based attempt number this run is for.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The part of [`attempt`](Self::attempt) backstop vouches for (see
    /// [`attempt::admit`]).
    pub fn confirmed_attempt(&self) -> u32 {
        self.confirmed_attempt
    }

    /// Takes the idempotency store's count of failed runs into the attempt
    /// ([`attempt::resume`]); the store's count is confirmed.
    pub fn confirm_failed_runs(&mut self, failed_runs: u32) {
        self.attempt = attempt::resume(self.attempt, failed_runs);
        self.confirmed_attempt = self.confirmed_attempt.max(failed_runs.saturating_add(1));
    }

    /// Sets the attempt number (the retry and idempotency layers do).
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    /// The cancellation token (cancelled on shutdown, or when this message
    /// alone is cancelled: its source lost it, it reached its unacked-time
    /// budget, or the idempotency lease this run holds was lost). Made on
    /// the first call when something cancels the message alone.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancel.token()
    }

    /// True once the message is cancelled (see [`cancellation`](Self::cancellation)),
    /// without making its token.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Replaces the cancellation token.
    pub fn set_cancellation(&mut self, cancel: CancellationToken) {
        self.cancel = cancel.into();
    }

    /// The message's cancellation, to add a tripwire to (the idempotency
    /// layer's lease).
    pub(crate) fn cancel_mut(&mut self) -> &mut Cancellation {
        &mut self.cancel
    }

    /// The handler's context for this attempt.
    #[inline]
    pub fn context(&self) -> Context {
        Context::cancelled_by(
            Arc::clone(&self.message),
            self.attempt,
            self.cancel.clone(),
            self.extensions.clone(),
        )
    }
}
