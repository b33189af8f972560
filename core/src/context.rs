//! [`Context`]: what a handler knows about the message it runs for.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

pub use crate::cancellation::Cancellation;
use crate::message::{Headers, Message, Meta};

/// A small type map carried by each request: the place a wrapper puts
/// per-attempt state for the handler (the PostgreSQL inbox's transaction).
///
/// Kept inline for the first few values, so carrying and cloning it with a
/// request (once per attempt) allocates nothing; each value is shared.
///
/// ```
/// use backstop::context::Extensions;
///
/// struct Tenant(&'static str);
/// let mut extensions = Extensions::default();
/// extensions.insert(Tenant("acme"));
/// let copy = extensions.clone();
/// assert_eq!(copy.get::<Tenant>().map(|t| t.0), Some("acme"));
/// assert!(extensions.remove::<Tenant>().is_some());
/// assert!(copy.get::<Tenant>().is_some(), "the copy keeps its own");
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    entries: SmallVec<[(TypeId, Value); 2]>,
}

/// An extension's value: its own, or held inside a value the stack shares
/// anyway (a held lease holds its [`LeaseToken`](crate::idempotency::LeaseToken)).
#[derive(Clone)]
enum Value {
    Own(Arc<dyn Any + Send + Sync>),
    Inside(Arc<dyn Holds>),
}

/// A value the stack shares anyway that holds an extension inside it, so
/// that extension costs no allocation of its own.
pub(crate) trait Holds: Send + Sync {
    /// The extension of type `id` it holds, if any.
    fn held(&self, id: TypeId) -> Option<&(dyn Any + Send + Sync)>;

    /// A copy of that extension, in a value of its own.
    fn detach(&self, id: TypeId) -> Option<Arc<dyn Any + Send + Sync>>;
}

impl Extensions {
    /// Inserts a value, replacing one of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.put(TypeId::of::<T>(), Value::Own(Arc::new(value)));
    }

    /// Inserts the `T` that `holder` holds, replacing one of the same type.
    pub(crate) fn insert_held<T: Any + Send + Sync>(&mut self, holder: Arc<dyn Holds>) {
        self.put(TypeId::of::<T>(), Value::Inside(holder));
    }

    fn put(&mut self, id: TypeId, value: Value) {
        match self.entries.iter_mut().find(|(t, _)| *t == id) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((id, value)),
        }
    }

    /// The value of type `T`, if present.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        let (_, value) = self.entries.iter().find(|(t, _)| *t == id)?;
        match value {
            Value::Own(value) => value.downcast_ref::<T>(),
            Value::Inside(holder) => holder.held(id)?.downcast_ref::<T>(),
        }
    }

    /// Removes and returns the value of type `T`, if present (copies of
    /// these extensions keep theirs).
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<Arc<T>> {
        let id = TypeId::of::<T>();
        let at = self.entries.iter().position(|(t, _)| *t == id)?;
        let (_, value) = self.entries.remove(at);
        match value {
            Value::Own(value) => value.downcast::<T>().ok(),
            Value::Inside(holder) => holder.detach(id)?.downcast::<T>().ok(),
        }
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.entries.len())
            .finish()
    }
}

/// What a handler sees besides the decoded payload.
#[derive(Clone, Debug)]
pub struct Context {
    message: Arc<Message>,
    attempt: u32,
    cancel: Cancellation,
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
        Self::cancelled_by(message, attempt, cancel.into(), extensions)
    }

    /// A context for one attempt at `message`, cancelled by `cancel` (the
    /// request's: cloning it takes no lock).
    pub(crate) fn cancelled_by(
        message: Arc<Message>,
        attempt: u32,
        cancel: Cancellation,
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

    /// Cancelled when the runner shuts down, or when this message alone is
    /// cancelled (its source lost it, it reached its unacked-time budget,
    /// its idempotency lease was lost): finish quickly or return an error.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancel.token()
    }

    /// True once shutdown has begun, or this message alone was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A value a wrapper put in for this attempt (for example the inbox's transaction).
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// The former name of [`extension`](Self::extension), which it calls.
    #[deprecated(
        since = "0.2.0",
        note = "use `extension::<T>()` (backstop-postgres: `InboxTx::from_context(&ctx)`)"
    )]
    pub fn transaction<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extension::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Token(u64);

    /// Holds a `Token` inside it, as a lease holds its request's token.
    struct Holder(Token);

    impl Holds for Holder {
        fn held(&self, id: TypeId) -> Option<&(dyn Any + Send + Sync)> {
            (id == TypeId::of::<Token>()).then_some(&self.0 as &(dyn Any + Send + Sync))
        }

        fn detach(&self, id: TypeId) -> Option<Arc<dyn Any + Send + Sync>> {
            (id == TypeId::of::<Token>()).then(|| Arc::new(self.0.clone()) as _)
        }
    }

    #[test]
    fn a_held_extension_reads_copies_and_removes_as_an_own_one() {
        let mut extensions = Extensions::default();
        extensions.insert_held::<Token>(Arc::new(Holder(Token(7))));
        extensions.insert(String::from("own"));
        assert_eq!(extensions.get::<Token>(), Some(&Token(7)));
        assert_eq!(extensions.get::<String>().map(String::as_str), Some("own"));
        assert_eq!(extensions.get::<u8>(), None);
        let copy = extensions.clone();
        assert_eq!(extensions.remove::<Token>().as_deref(), Some(&Token(7)));
        assert_eq!(extensions.get::<Token>(), None, "removed");
        assert_eq!(copy.get::<Token>(), Some(&Token(7)), "the copy keeps it");
        // An own value of the type replaces a held one.
        let mut replaced = copy.clone();
        replaced.insert(Token(8));
        assert_eq!(replaced.get::<Token>(), Some(&Token(8)));
    }
}
