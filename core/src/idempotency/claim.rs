//! The claim of one message's keys and the settlement of its leases.

use std::time::Duration;

use super::measured::Timed;
use super::{Claim, Fence, Key, Keyspace, Layout, MAX_LETTER_TEXT, Store};
use crate::error::{Error, Failure};
use crate::outcome::Outcome;
use crate::wire;

/// The keys one message is leased under: its key in its consumer's
/// keyspace (or as given, in the legacy layout), and during a migration
/// window its legacy key as well.
pub(super) struct Keys {
    pub(super) key: Key,
    pub(super) legacy: Option<Key>,
}

impl Keys {
    pub(super) fn of(
        layout: Layout,
        raw: &str,
        meta: &crate::message::Meta,
        service: Option<&str>,
    ) -> Self {
        if !layout.keyspaced() {
            return Keys {
                key: Key::new(raw),
                legacy: None,
            };
        }
        let key = Keyspace::key_of(meta, service, raw);
        let legacy = layout.reads_legacy_now().then(|| Key::new(raw));
        Keys { key, legacy }
    }
}

/// The leases of an acquired [`Keys`].
pub(super) struct Claimed {
    pub(super) fence: Fence,
    legacy: Option<Fence>,
    pub(super) failed_runs: u32,
    pub(super) crashed: bool,
    /// The failure whose dead letter is still to be written, if the store
    /// recorded one: only that letter is written, the handler does not run.
    pub(super) letter: Option<Failure>,
}

impl Claimed {
    /// Every `(key, fence)` held.
    pub(super) fn held(&self, keys: &Keys) -> impl Iterator<Item = (Key, Fence)> + use<> {
        let legacy = match (&keys.legacy, self.legacy) {
            (Some(key), Some(fence)) => Some((key.clone(), fence)),
            _ => None,
        };
        std::iter::once((keys.key.clone(), self.fence)).chain(legacy)
    }

    /// Gives every lease up, keeping the counts.
    pub(super) async fn release(&self, store: &Timed<'_>, keys: &Keys) -> Result<(), Error> {
        for (key, fence) in self.held(keys) {
            store
                .release(&key, fence, None)
                .await
                .map_err(Error::Store)?;
        }
        Ok(())
    }
}

/// How a claim ended the message's way through the layer, with the
/// result the layer answers: a duplicate (`Ok`), a busy key or the store
/// down (`Err`).
pub(super) type Ended = Result<Outcome, Error>;

/// Claims `keys`: the key, then its legacy key (if read). A legacy key
/// completed or dead-lettered makes the message a duplicate (recorded in
/// the new layout too); one held by another worker makes it busy.
pub(super) async fn claim(
    store: &Timed<'_>,
    keys: &Keys,
    owner: &str,
    lease: Duration,
    replay: u32,
) -> Result<Claimed, Ended> {
    let first = store
        .claim(&keys.key, owner, lease, replay)
        .await
        .map_err(|e| Err(Error::Store(e)))?;
    let claimed = acquired(first, &keys.key)?;
    let Some(legacy) = &keys.legacy else {
        return Ok(claimed);
    };
    let Claimed {
        fence,
        failed_runs,
        crashed,
        letter,
        ..
    } = claimed;
    let old = match store.claim(legacy, owner, lease, replay).await {
        Ok(old) => old,
        Err(error) => {
            let _ = store.release(&keys.key, fence, None).await;
            return Err(Err(Error::Store(error)));
        }
    };
    let recorded = match old {
        Claim::Acquired {
            fence: old_fence,
            failed_runs: old_runs,
            crashed: old_crashed,
        } => {
            return Ok(Claimed {
                fence,
                legacy: Some(old_fence),
                failed_runs: failed_runs.max(old_runs),
                crashed: crashed || old_crashed,
                letter,
            });
        }
        Claim::LetterPending {
            fence: old_fence,
            failed_runs: old_runs,
            letter: old_letter,
        } => {
            return Ok(Claimed {
                fence,
                legacy: Some(old_fence),
                failed_runs: failed_runs.max(old_runs),
                crashed,
                letter: letter.or(Some(old_letter)),
            });
        }
        Claim::Completed => store.complete(&keys.key, fence).await,
        Claim::DeadLettered => store.mark_dead_lettered(&keys.key, fence).await,
        Claim::Busy { .. } => store.release(&keys.key, fence, None).await.map(|()| true),
    };
    if let Err(error) = recorded {
        tracing::warn!(%error, key = %keys.key, "could not record the legacy key's state in the new layout");
    }
    Err(match old {
        Claim::Busy { .. } => Err(Error::Busy {
            key: legacy.to_string(),
        }),
        _ => Ok(Outcome::Duplicate),
    })
}

/// [`claim`] when it needs no second call and the store answers at once
/// ([`Store::claim_now`](super::Store::claim_now)): no legacy key is read.
/// `None` when nothing was called.
/// `store` is the measured store (its calls timed, as [`Timed`]'s are).
pub(super) fn claim_now(
    store: &dyn Store,
    keys: &Keys,
    owner: &str,
    lease: Duration,
    replay: u32,
) -> Option<Result<Claimed, Ended>> {
    if keys.legacy.is_some() {
        return None;
    }
    let first = match store.claim_now(&keys.key, owner, lease, replay)? {
        Ok(first) => first,
        Err(error) => return Some(Err(Err(Error::Store(error)))),
    };
    Some(acquired(first, &keys.key))
}

/// [`settle`] when the store answers at once: a handled or discarded
/// result whose completion the store writes without a round trip
/// ([`Store::complete_now`](super::Store::complete_now)). `None` when
/// nothing was called.
pub(super) fn settle_now(
    store: &dyn Store,
    key: &Key,
    fence: Fence,
    result: &Result<Outcome, Error>,
) -> Option<Result<(), crate::error::StoreError>> {
    match result {
        Ok(Outcome::Handled | Outcome::Discarded { .. }) => {
            Some(store.complete_now(key, fence)?.map(lost(key, fence)))
        }
        _ => None,
    }
}

/// Records the inner result for the lease `fence` on `key`. Fails only
/// when a completion could not be written (the message must not be acked
/// then); any other failure is logged, and the lease expires by itself.
pub(super) async fn settle(
    store: &Timed<'_>,
    key: &Key,
    fence: Fence,
    result: &Result<Outcome, Error>,
) -> Result<(), crate::error::StoreError> {
    // Discarded: settled for good as well, so a redelivery is a duplicate.
    if let Ok(Outcome::Handled | Outcome::Discarded { .. }) = result {
        return store.complete(key, fence).await.map(lost(key, fence));
    }
    let settled = match result {
        Ok(Outcome::Handled | Outcome::Discarded { .. }) => Ok(()),
        Ok(Outcome::DeadLettered { .. }) => store
            .mark_dead_lettered(key, fence)
            .await
            .map(lost(key, fence)),
        Ok(Outcome::Deferred { attempt, .. }) => {
            store
                .release(key, fence, Some(attempt.saturating_sub(1)))
                .await
        }
        Ok(Outcome::Duplicate) => store.release(key, fence, None).await,
        // A DLQ write that failed records the letter (the store keeps it for
        // the redelivery, on any worker, which retries only the write); a
        // retry write that failed keeps the failed runs; an outage or
        // shutdown counts none.
        Err(Error::DeadLetter { failure, .. }) => store
            .release_with_letter(key, fence, &bounded(failure))
            .await
            .map(drop),
        Err(error) => store.release(key, fence, error.failed_runs()).await,
    };
    if let Err(error) = settled {
        // The message's fate is settled; the lease expires by itself.
        tracing::warn!(%error, %key, "could not record the key's state in the idempotency store");
    }
    Ok(())
}

/// Logs a settlement the store refused (the lease was lost).
fn lost(key: &Key, fence: Fence) -> impl Fn(bool) + '_ {
    move |held| {
        if !held {
            tracing::warn!(%key, %fence, "the lease was lost before the result was recorded; the store refused the late result");
        }
    }
}

/// `failure` with its error text cut to what a store keeps.
fn bounded(failure: &Failure) -> Failure {
    let mut letter = failure.clone();
    letter.message = wire::truncate(&failure.message, MAX_LETTER_TEXT).to_owned();
    letter
}

/// The lease of an acquired claim (no legacy key read yet); a duplicate or
/// a busy key ends the message's way through the layer.
fn acquired(claim: Claim, key: &Key) -> Result<Claimed, Ended> {
    match claim {
        Claim::Acquired {
            fence,
            failed_runs,
            crashed,
        } => Ok(Claimed {
            fence,
            legacy: None,
            failed_runs,
            crashed,
            letter: None,
        }),
        Claim::LetterPending {
            fence,
            failed_runs,
            letter,
        } => Ok(Claimed {
            fence,
            legacy: None,
            failed_runs,
            crashed: false,
            letter: Some(letter),
        }),
        Claim::Completed | Claim::DeadLettered => Err(Ok(Outcome::Duplicate)),
        Claim::Busy { .. } => Err(Err(Error::Busy {
            key: key.to_string(),
        })),
    }
}
