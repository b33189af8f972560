//! Deliveries whose effects wait for their source's transaction.
//!
//! Some brokers commit what a consumer produced together with how far it
//! consumed: Kafka's transactions write records and the group's offsets in
//! one atomic commit. A source that works that way (backstop-kafka's
//! exactly-once mode) puts a [`Transaction`] into each delivery with
//! [`Delivery::in_transaction`](crate::delivery::Delivery::in_transaction). The stack
//! then gives the delivery's effects to it instead of making them at once:
//!
//! - **dead letters and delayed-retry copies**: the writers call
//!   [`DeadLetterSink::dead_letter_in`](crate::dead_letter::DeadLetterSink::dead_letter_in)
//!   and [`RetrySink::retry_later_in`](crate::retry::RetrySink::retry_later_in); a
//!   sink that knows the transaction adds the record to it (the default
//!   writes at once, as outside a transaction);
//! - **the handler's publishes**: a back-end around each attempt that adds
//!   a successful attempt's messages to the transaction (backstop-kafka's
//!   `TransactionalPublishLayer`);
//! - **the idempotency marks** (`completed`, `dead_lettered`, and the
//!   release of a deferred message with its failed runs): the idempotency
//!   layer hands them over as [`HeldMarks`], still holding (and renewing)
//!   the leases. The source writes them with [`HeldMarks::write`] only after
//!   its commit returned, and drops them on an abort, which releases the
//!   leases without counting a failed run. A mark written before the commit
//!   would make the redelivery after an abort a `Duplicate` and lose what
//!   the aborted transaction held.
//!
//! A delivery that ends in an error produces nothing: its redelivery runs
//! again (its records are dropped by the source when it is nacked).

use std::sync::Arc;

use crate::error::SinkError;
pub use crate::idempotency::HeldMarks;
use crate::message::Message;

/// A source's open transaction, as one delivery sees it; see the
/// [module docs](self).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backstop::transaction::{HeldMarks, Transaction};
/// use backstop::{Message};
/// use backstop::error::SinkError;
///
/// /// Collects what one delivery produced, for its source to commit.
/// #[derive(Default)]
/// struct Collected(Mutex<Vec<(String, Message)>>);
///
/// impl Transaction for Collected {
///     fn produce(&self, destination: &str, message: Message) -> Result<(), SinkError> {
///         self.0.lock().unwrap().push((destination.to_owned(), message));
///         Ok(())
///     }
///     fn hold(&self, marks: HeldMarks) {
///         // A real source keeps them until its commit returns, then
///         // spawns `marks.write()`; dropping them releases the leases.
///         drop(marks);
///     }
/// }
///
/// let collected = Collected::default();
/// collected.produce("orders.dlq", Message::new("x")).unwrap();
/// assert_eq!(collected.0.lock().unwrap().len(), 1);
/// ```
pub trait Transaction: Send + Sync + 'static {
    /// Adds `message` for `destination` to the delivery's records: they are
    /// written with the commit that covers the delivery, or not at all.
    /// Fails when the delivery no longer belongs to this source (its
    /// partition was revoked or rewound).
    fn produce(&self, destination: &str, message: Message) -> Result<(), SinkError>;

    /// Whether `message` could ever be produced to `destination` (a
    /// record over the producer's size limit cannot): checked before
    /// effects elsewhere commit. The default admits everything.
    fn admits(&self, destination: &str, message: &Message) -> Result<(), SinkError> {
        let _ = (destination, message);
        Ok(())
    }

    /// Adds every record, or none when one is not admitted (an attempt's
    /// publishes join its delivery together). The default checks each with
    /// [`admits`](Self::admits) first, then produces them in order.
    fn produce_all(&self, records: Vec<(String, Message)>) -> Result<(), SinkError> {
        for (destination, message) in &records {
            self.admits(destination, message)?;
        }
        for (destination, message) in records {
            self.produce(&destination, message)?;
        }
        Ok(())
    }

    /// Keeps the delivery's idempotency marks until the commit that covers
    /// it returned (then [`HeldMarks::write`]); dropping them releases the
    /// leases without counting a failed run.
    fn hold(&self, marks: HeldMarks);
}

/// The [`Transaction`] a delivery belongs to, in its request's
/// [`Extensions`](crate::context::Extensions) (put there from the
/// [`Delivery`](crate::delivery::Delivery)).
#[derive(Clone)]
pub struct InTransaction(pub Arc<dyn Transaction>);

impl std::fmt::Debug for InTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InTransaction").finish_non_exhaustive()
    }
}
