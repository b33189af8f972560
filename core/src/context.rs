//! [`Context`]: what a handler knows about the message it runs for.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{Headers, Message, Meta};

/// A small type map carried by each request: the place a wrapper puts
/// per-attempt state for the handler (the PostgreSQL inbox's transaction).
#[derive(Clone, Default)]
pub struct Extensions {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// Inserts a value, replacing one of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if present.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// Removes and returns the value of type `T`, if present and not shared.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<Arc<T>> {
        self.map
            .remove(&TypeId::of::<T>())
            .and_then(|v| v.downcast::<T>().ok())
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.map.len())
            .finish()
    }
}

/// What a handler sees besides the decoded payload.
#[derive(Clone, Debug)]
pub struct Context {
    message: Arc<Message>,
    attempt: u32,
    cancel: CancellationToken,
    extensions: Extensions,
}

impl Context {
    /// A context for one attempt at `message`.
    pub fn new(
        message: Arc<Message>,
        attempt: u32,
        cancel: CancellationToken,
        extensions: Extensions,
    ) -> Self {
        Context {
            message,
            attempt,
            cancel,
            extensions,
        }
    }

    /// The raw message (payload bytes, headers, key).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Delivery metadata.
    pub fn meta(&self) -> &Meta {
        &self.message.meta
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// The message id.
    pub fn message_id(&self) -> &str {
        &self.message.meta.message_id
    }

    /// The 1-based number of this attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Cancelled when the runner shuts down: finish quickly or return an error.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A value a wrapper put in for this attempt (for example the inbox's transaction).
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// The transaction slot: the open transaction an inbox wrapper handed in, if any.
    pub fn transaction<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extension::<T>()
    }
}
