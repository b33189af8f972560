//! A message's cancellation: the run's shutdown, shared by every message
//! without a lock per message, and the tripwires that cancel one message
//! alone (its source lost it, it reached its unacked-time budget, or its
//! idempotency lease was lost).
//!
//! A handler sees one tokio [`CancellationToken`] that fires on any of
//! these. Cloning or making a token takes a lock on its tree (shared by
//! every message of a run), so the token is made only when something asks
//! for it ([`Cancellation::token`]); until then, firing a tripwire sets a
//! flag that [`Cancellation::is_cancelled`] reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// A message's cancellation: fires on the run's shutdown and on whatever
/// cancels this message alone (its source losing it, its unacked-time
/// budget, a lost idempotency lease). Cloning it takes no lock.
///
/// ```
/// use backstop::context::Cancellation;
/// use backstop::CancellationToken;
///
/// let shutdown = CancellationToken::new();
/// let cancellation = Cancellation::from(shutdown.clone());
/// assert!(!cancellation.is_cancelled());
/// shutdown.cancel();
/// assert!(cancellation.is_cancelled());
/// assert!(cancellation.token().is_cancelled());
/// ```
#[derive(Clone, Debug)]
pub struct Cancellation {
    shutdown: Arc<CancellationToken>,
    /// The innermost tripwire of this message, if anything cancels it alone.
    trip: Option<Arc<dyn Wired>>,
}

impl Cancellation {
    /// The cancellation of a message that only the run's `shutdown` cancels
    /// (shared: no lock, no allocation per message).
    pub(crate) fn shared(shutdown: Arc<CancellationToken>) -> Self {
        Cancellation {
            shutdown,
            trip: None,
        }
    }

    /// The token that fires when this message is cancelled: the shutdown
    /// token itself, or (when something cancels the message alone) its
    /// child, made on the first call.
    #[inline]
    pub fn token(&self) -> &CancellationToken {
        match &self.trip {
            None => &self.shutdown,
            Some(trip) => trip.tripwire().token(&self.shutdown),
        }
    }

    /// Waits until the message is cancelled (through its [`token`](Self::token)).
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token().cancelled()
    }

    /// True once the message is cancelled (without making its token).
    pub fn is_cancelled(&self) -> bool {
        self.trip
            .as_ref()
            .is_some_and(|trip| trip.tripwire().is_fired())
            || self.shutdown.is_cancelled()
    }

    /// The innermost tripwire, for a new one to nest in.
    pub(crate) fn trip(&self) -> Option<Arc<dyn Wired>> {
        self.trip.clone()
    }

    /// This cancellation, also fired by `trip` (which must nest in
    /// [`trip`](Self::trip), so it fires with the tripwires before it).
    pub(crate) fn tripped_by(&mut self, trip: Arc<dyn Wired>) {
        self.trip = Some(trip);
    }
}

/// The message's token ([`Cancellation::token`]), so code written for a
/// [`CancellationToken`] (`child_token`, `cancelled_owned`, a clone) works
/// on it.
impl std::ops::Deref for Cancellation {
    type Target = CancellationToken;

    fn deref(&self) -> &CancellationToken {
        self.token()
    }
}

impl From<CancellationToken> for Cancellation {
    fn from(token: CancellationToken) -> Self {
        Cancellation::shared(Arc::new(token))
    }
}

/// Something that holds a [`Tripwire`] (an idempotency lease holds its
/// own, so a lease and its tripwire are one allocation).
pub(crate) trait Wired: std::fmt::Debug + Send + Sync {
    /// The tripwire.
    fn tripwire(&self) -> &Tripwire;
}

/// Cancels one message alone. Nested in the tripwire made before it (if
/// any), so it fires with it too.
#[derive(Debug, Default)]
pub(crate) struct Tripwire {
    fired: AtomicBool,
    /// The token of this tripwire, once asked for: a child of the outer
    /// tripwire's token, or of the shutdown token.
    token: OnceLock<CancellationToken>,
    outer: Option<Arc<dyn Wired>>,
}

impl Wired for Tripwire {
    fn tripwire(&self) -> &Tripwire {
        self
    }
}

impl Tripwire {
    /// A tripwire that also fires when `outer` does.
    pub(crate) fn within(outer: Option<Arc<dyn Wired>>) -> Self {
        Tripwire {
            fired: AtomicBool::new(false),
            token: OnceLock::new(),
            outer,
        }
    }

    /// Cancels the message (and every tripwire nested in this one).
    pub(crate) fn fire(&self) {
        // Set before the token is looked at; `token` makes the token, then
        // reads the flag: whichever comes second cancels it.
        self.fired.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    /// True once this tripwire or one it nests in fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
            || self
                .outer
                .as_ref()
                .is_some_and(|outer| outer.tripwire().is_fired())
    }

    /// This tripwire's token, made on the first call as a child of the
    /// outer tripwire's token (or of `shutdown`).
    fn token(&self, shutdown: &CancellationToken) -> &CancellationToken {
        let token = self.token.get_or_init(|| {
            let parent = match &self.outer {
                Some(outer) => outer.tripwire().token(shutdown),
                None => shutdown,
            };
            parent.child_token()
        });
        // Pairs with `fire`'s store: the token was published (above), then
        // the flag is read; `fire` stores the flag, then reads the token.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.fired.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(outer: &Arc<Tripwire>) -> Arc<Tripwire> {
        Arc::new(Tripwire::within(Some(Arc::clone(outer) as Arc<dyn Wired>)))
    }

    #[test]
    fn shutdown_cancels_the_shared_token_and_every_tripwire_token() {
        let shutdown = CancellationToken::new();
        let outer = Arc::new(Tripwire::default());
        let inner = nested(&outer);
        let mut cancellation = Cancellation::from(shutdown.clone());
        cancellation.tripped_by(Arc::clone(&inner) as Arc<dyn Wired>);
        let token = cancellation.token().clone();
        assert!(!cancellation.is_cancelled());
        shutdown.cancel();
        assert!(cancellation.is_cancelled());
        assert!(token.is_cancelled());
        assert!(!inner.is_fired(), "shutdown is not a tripwire firing");
    }

    #[test]
    fn a_tripwire_fires_its_message_alone() {
        let shutdown = CancellationToken::new();
        let mut one = Cancellation::from(shutdown.clone());
        let two = one.clone();
        let wire = Arc::new(Tripwire::default());
        one.tripped_by(Arc::clone(&wire) as Arc<dyn Wired>);
        wire.fire();
        assert!(one.is_cancelled());
        assert!(one.token().is_cancelled(), "a token made after the firing");
        assert!(!two.is_cancelled());
        assert!(!two.token().is_cancelled());
        assert!(!shutdown.is_cancelled());
    }

    #[test]
    fn a_token_made_before_the_firing_is_cancelled_by_it() {
        let mut cancellation = Cancellation::from(CancellationToken::new());
        let wire = Arc::new(Tripwire::default());
        cancellation.tripped_by(Arc::clone(&wire) as Arc<dyn Wired>);
        let token = cancellation.token().clone();
        assert!(!token.is_cancelled());
        wire.fire();
        assert!(token.is_cancelled());
    }

    #[test]
    fn an_outer_tripwire_fires_the_ones_nested_in_it() {
        let outer = Arc::new(Tripwire::default());
        let inner = nested(&outer);
        let mut before = Cancellation::from(CancellationToken::new());
        before.tripped_by(Arc::clone(&inner) as Arc<dyn Wired>);
        let early = before.token().clone();
        let after = before.clone();
        outer.fire();
        assert!(inner.is_fired());
        assert!(early.is_cancelled(), "the token made before");
        assert!(after.token().is_cancelled(), "a token made after");
        assert!(after.is_cancelled());
    }

    #[test]
    fn firing_while_tokens_are_made_never_leaves_one_uncancelled() {
        for _ in 0..200 {
            let shutdown = CancellationToken::new();
            let wire = Arc::new(Tripwire::default());
            let mut cancellation = Cancellation::from(shutdown);
            cancellation.tripped_by(Arc::clone(&wire) as Arc<dyn Wired>);
            let firing = std::thread::spawn({
                let wire = Arc::clone(&wire);
                move || wire.fire()
            });
            let token = cancellation.token().clone();
            firing.join().expect("the firing thread");
            assert!(token.is_cancelled());
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    /// Shutdown, the ack layer's tripwire and two nested lease tripwires (a
    /// migration's two leases), as a message's cancellation holds them.
    fn chain() -> (
        CancellationToken,
        Arc<Tripwire>,
        Arc<Tripwire>,
        Arc<Tripwire>,
        Cancellation,
    ) {
        let shutdown = CancellationToken::new();
        let mut c = Cancellation::from(shutdown.clone());
        let ack = Arc::new(Tripwire::within(None));
        c.tripped_by(Arc::clone(&ack) as Arc<dyn Wired>);
        let l1 = Arc::new(Tripwire::within(c.trip()));
        let l2 = Arc::new(Tripwire::within(Some(Arc::clone(&l1) as Arc<dyn Wired>)));
        c.tripped_by(Arc::clone(&l2) as Arc<dyn Wired>);
        (shutdown, ack, l1, l2, c)
    }

    #[test]
    fn every_link_of_a_chain_cancels_tokens_made_before_and_after_it_fires() {
        for which in 0..4 {
            for early in [true, false] {
                let (shutdown, ack, l1, l2, c) = chain();
                let before = early.then(|| c.token().clone());
                let other = c.clone();
                match which {
                    0 => shutdown.cancel(),
                    1 => ack.fire(),
                    2 => l1.fire(),
                    _ => l2.fire(),
                }
                assert!(c.is_cancelled(), "{which} {early}");
                assert!(other.token().is_cancelled(), "{which} {early}");
                if let Some(t) = before {
                    assert!(t.is_cancelled(), "{which} {early}");
                }
            }
        }
    }
}
