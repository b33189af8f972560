//! [`Request`]: a message decoded once, as it travels through the layers.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::context::{Context, Extensions};
use crate::payload::{DecodeError, Payload};
use crate::{Message, attempt};

/// A message decoded once at the top of the stack, cheap to clone per attempt.
#[derive(Debug)]
pub struct Request<T> {
    message: Arc<Message>,
    payload: Arc<Result<T, DecodeError>>,
    payload_key: Option<Arc<str>>,
    attempt: u32,
    cancel: CancellationToken,
    /// Per-attempt values for the handler's [`Context`].
    pub extensions: Extensions,
}

impl<T> Clone for Request<T> {
    fn clone(&self) -> Self {
        Request {
            message: Arc::clone(&self.message),
            payload: Arc::clone(&self.payload),
            payload_key: self.payload_key.clone(),
            attempt: self.attempt,
            cancel: self.cancel.clone(),
            extensions: self.extensions.clone(),
        }
    }
}

impl<T: Payload> Request<T> {
    /// Decodes `message` (at most `max_payload` bytes) and extracts its key.
    pub fn decode(message: Message, cancel: CancellationToken, max_payload: Option<usize>) -> Self {
        let payload = match max_payload {
            Some(max) if message.payload.len() > max => Err(DecodeError::TooLarge {
                size: message.payload.len(),
                max,
            }),
            _ => T::decode(&message.payload),
        };
        let payload_key = payload.as_ref().ok().and_then(T::key).map(Arc::from);
        let attempt = message.meta.attempt.max(attempt::FIRST);
        Request {
            message: Arc::new(message),
            payload: Arc::new(payload),
            payload_key,
            attempt,
            cancel,
            extensions: Extensions::default(),
        }
    }
}

impl<T> Request<T> {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The shared message.
    pub fn message_arc(&self) -> &Arc<Message> {
        &self.message
    }

    /// The decoded payload, or why it did not decode.
    pub fn payload(&self) -> Result<&T, &DecodeError> {
        self.payload.as_ref().as_ref()
    }

    /// The key the payload type extracted, if any.
    pub fn payload_key(&self) -> Option<&str> {
        self.payload_key.as_deref()
    }

    /// The 1-based attempt number this run is for.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sets the attempt number (the retry and idempotency layers do).
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    /// The cancellation token (cancelled on shutdown).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The handler's context for this attempt.
    pub fn context(&self) -> Context {
        Context::new(
            Arc::clone(&self.message),
            self.attempt,
            self.cancel.clone(),
            self.extensions.clone(),
        )
    }
}
