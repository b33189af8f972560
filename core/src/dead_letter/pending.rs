//! Letters whose write failed and that wait for their message's
//! redelivery; see *Pending letters* in the [module docs](super).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Failure;
use crate::message::Message;

/// In a request's extensions when the idempotency store recorded that the
/// message's run failed for good and its dead letter is still to be written
/// ([`Claim::LetterPending`](crate::idempotency::Claim::LetterPending)): the
/// [`DeadLetter`](super::DeadLetter) service writes this failure's letter
/// and does not call the inner stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingLetter(pub Failure);

/// The most letters remembered at once.
pub(crate) const CAPACITY: usize = 10_000;

/// A message's identity across redeliveries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    origin: String,
    message_id: String,
    replayed: u32,
    len: usize,
}

impl Identity {
    fn of(message: &Message) -> Self {
        Identity {
            origin: message.meta.origin().to_owned(),
            message_id: message.meta.message_id.clone(),
            replayed: message.replayed(),
            len: message.payload.len(),
        }
    }
}

/// The failures of messages whose letters are still to be written.
#[derive(Debug, Default)]
pub(crate) struct PendingLetters {
    state: Mutex<State>,
    /// True while the table may hold a letter: every message asks, and the
    /// table is almost always empty, so the answer is read without the
    /// lock (which every consumer of the stack would share).
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    failures: HashMap<Identity, Failure>,
    order: VecDeque<Identity>,
}

impl PendingLetters {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change below leaves the map consistent, even if interrupted.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `message`'s letter, carrying `failure`, is not written yet.
    pub(crate) fn remember(&self, message: &Message, failure: &Failure) {
        let identity = Identity::of(message);
        let mut state = self.lock();
        self.any.store(true, Ordering::Release);
        if state
            .failures
            .insert(identity.clone(), failure.clone())
            .is_none()
        {
            state.order.push_back(identity);
        }
        while state.failures.len() > CAPACITY {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.failures.remove(&oldest);
        }
    }

    /// The failure whose letter is still to be written for `message`, if any
    /// (the table is almost always empty: then no identity is built).
    pub(crate) fn get(&self, message: &Message) -> Option<Failure> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        if state.failures.is_empty() {
            return None;
        }
        state.failures.get(&Identity::of(message)).cloned()
    }

    /// Forgets `message`'s pending letter (it was written).
    pub(crate) fn forget(&self, message: &Message) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if state.failures.is_empty() {
            return;
        }
        let identity = Identity::of(message);
        if state.failures.remove(&identity).is_some() {
            state.order.retain(|i| *i != identity);
        }
        if state.failures.is_empty() {
            // Under the lock: a `remember` after this sets it again.
            self.any.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::error::ErrorKind;

    fn failure(text: &str) -> Failure {
        Failure {
            kind: ErrorKind::Timeout,
            message: text.into(),
            attempts: 2,
            first_failure: SystemTime::now(),
            last_failure: SystemTime::now(),
        }
    }

    #[test]
    fn a_redelivery_finds_its_failure_until_the_letter_is_written() {
        let pending = PendingLetters::default();
        let message = Message::new("body").with_message_id("m-1");
        pending.remember(&message, &failure("slow"));
        let again = Message::new("body").with_message_id("m-1");
        assert_eq!(pending.get(&again).map(|f| f.message), Some("slow".into()));
        assert!(
            pending
                .get(&Message::new("body").with_message_id("m-2"))
                .is_none()
        );
        pending.forget(&again);
        assert!(pending.get(&message).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let pending = PendingLetters::default();
        for n in 0..=CAPACITY {
            pending.remember(
                &Message::new("b").with_message_id(n.to_string()),
                &failure("x"),
            );
        }
        assert!(
            pending
                .get(&Message::new("b").with_message_id("0"))
                .is_none()
        );
        assert!(
            pending
                .get(&Message::new("b").with_message_id(CAPACITY.to_string()))
                .is_some()
        );
    }
}
