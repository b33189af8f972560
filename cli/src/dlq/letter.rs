//! [`Letter`]: one dead letter as read from a DLQ, with its copy count
//! and (on Kafka) its recorded state.

use std::time::SystemTime;

use backstop::{Message, wire};

/// One dead letter as read from the DLQ.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The message as read (meta: the DLQ's partition/offset on Kafka).
    pub message: Message,
    /// Kafka: `replayed` or `purged` when the state topic records it.
    pub state: Option<String>,
    /// How many copies of this letter (same message id; same replay count on
    /// Kafka) the DLQ holds: more than 1 after a crash wrote it twice. One
    /// letter for every command: listed once, replayed once, purged whole.
    pub copies: u32,
}

impl Letter {
    /// A letter without state, one copy.
    pub fn new(message: Message) -> Self {
        Letter {
            message,
            state: None,
            copies: 1,
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.message.meta.message_id
    }

    /// `x-backstop-original-source`, if present.
    pub fn original_source(&self) -> Option<&str> {
        self.message.header(wire::ORIGINAL_SOURCE)
    }

    /// When it failed last (else first, else the broker timestamp).
    pub fn failed_at(&self) -> Option<SystemTime> {
        let m = &self.message;
        m.header(wire::LAST_FAILURE)
            .or(m.header(wire::FIRST_FAILURE))
            .and_then(wire::parse_time)
            .or(m.meta.timestamp)
    }
}
