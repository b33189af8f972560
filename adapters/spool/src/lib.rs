//! Reliable publishing for backstop: the producer side of "lose nothing".
//!
//! [`ReliablePublisher`] wraps any confirmed [`Publisher`](backstop::publish::Publisher)
//! (RabbitMQ's, Kafka's, the in-memory broker's). A publish is retried with
//! exponential backoff and full jitter within a [`Budget`]; what the broker
//! still does not confirm is written to a durable local [`Spool`] (SQLite,
//! WAL mode, `synchronous=FULL`, committed before the call returns) and
//! the call resolves to [`Sent::Spooled`]. A relay task drains the spool in
//! order once the broker answers again, removing a record only after the
//! broker confirmed it. The spool is bounded ([`SpoolConfig`], [`WhenFull`]),
//! survives restarts and crashes, and belongs to one process at a time.
//!
//! ```
//! use backstop::{memory::MemoryBroker, Message};
//! use backstop_spool::{ReliablePublisher, Sent, SpoolConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let broker = MemoryBroker::new();
//! let spool = SpoolConfig::new(dir.path().join("orders.spool"));
//! let publisher = ReliablePublisher::open(broker.clone(), spool).await?;
//!
//! let sent = publisher.publish("orders", &Message::new(r#"{"id":1}"#)).await?;
//! assert_eq!(sent, Sent::Confirmed);
//! assert_eq!(broker.stats("orders").ready, 1);
//! publisher.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A spooled message the broker later refuses for good (too large, invalid,
//! not authorised), or a row that cannot be read back, is moved to the
//! spool's refused records ([`Spool::refused`], `backstop spool refused`)
//! so it never blocks the messages behind it.
//!
//! See [`ReliablePublisher`] for what is retried, what is spooled and what
//! is returned, and the order kept per key; [`SpoolingDeadLetterSink`] for
//! the same on the consumer's dead-letter path; [`mod@metrics`] for the metrics.
//!
//! # What a crash keeps
//!
//! A message for which `publish` returned [`Sent::Spooled`] is in the
//! spool's committed WAL: it survives `kill -9` of the process and, with
//! `synchronous=FULL`, a power cut (as far as the disk honours `fsync`).
//! A message whose `publish` had not returned may or may not be there.
//! After a restart, opening the same spool relays what it holds.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod budget;
mod config;
mod dead_letter;
mod error;
mod lock;
pub mod metrics;
mod outlet;
mod publisher;
mod record;
mod relay;
mod running;
mod send;
mod spool;

pub use crate::budget::Budget;
pub use crate::config::{RelayConfig, SpoolConfig, WhenFull};
pub use crate::dead_letter::{SpoolingDeadLetterSink, SpoolingDeadLetterSinkBuilder};
pub use crate::error::{OpenError, ReliableError, SpoolError};
pub use crate::publisher::{ReliablePublisher, ReliablePublisherBuilder};
pub use crate::record::{RefusedRecord, SpooledRecord};
pub use crate::relay::{RecordLog, Relay};
pub use crate::send::Sent;
pub use crate::spool::Spool;
