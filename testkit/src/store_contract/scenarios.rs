//! The contract's scenarios, each a function of a [`Backend`], and the
//! checks they share.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use backstop::ErrorKind;
use backstop::error::{Failure, StoreError};
use backstop::idempotency::Store;
use backstop::idempotency::{Claim, ClaimOf, Fence, Held, Key, MAX_KEY_LEN, MAX_LETTER_TEXT};
use futures::future::join_all;

use super::{Backend, ContractError};

/// One scenario's run: its name, its keys, its checks.
struct Run<'a> {
    scenario: &'static str,
    backend: &'a dyn Backend,
    nonce: String,
}

impl<'a> Run<'a> {
    fn new(scenario: &'static str, backend: &'a dyn Backend) -> Self {
        Run {
            scenario,
            backend,
            nonce: backstop::message::new_message_id(),
        }
    }

    fn key(&self, name: &str) -> Key {
        Key::new(&format!("contract:{}:{}:{name}", self.scenario, self.nonce))
    }

    async fn instance(&self) -> Result<Arc<dyn Store>, ContractError> {
        self.backend
            .instance()
            .await
            .map_err(|source| ContractError::Instance {
                scenario: self.scenario,
                source,
            })
    }

    fn ok<T>(&self, result: Result<T, StoreError>) -> Result<T, ContractError> {
        result.map_err(|source| ContractError::Store {
            scenario: self.scenario,
            source,
        })
    }

    fn eq<T: PartialEq + Debug>(&self, got: T, want: T, what: &str) -> Result<(), ContractError> {
        if got == want {
            Ok(())
        } else {
            Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!("{what}: expected {want:?}, got {got:?}"),
            })
        }
    }

    /// The fence of an `Acquired` claim with `failed_runs` and `crashed` as given.
    fn acquired(
        &self,
        got: Claim,
        failed_runs: u32,
        crashed: bool,
        what: &str,
    ) -> Result<Fence, ContractError> {
        match got {
            Claim::Acquired {
                fence,
                failed_runs: f,
                crashed: c,
            } if f == failed_runs && c == crashed => Ok(fence),
            other => Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!(
                    "{what}: expected Acquired with {failed_runs} failed runs (crashed: {crashed}), got {other:?}"
                ),
            }),
        }
    }

    /// Claims `key` and expects a lease with `failed_runs`, no crash.
    async fn take(
        &self,
        store: &Arc<dyn Store>,
        key: &Key,
        owner: &str,
        replay: u32,
        failed_runs: u32,
        what: &str,
    ) -> Result<Fence, ContractError> {
        let claim = self.ok(store.claim(key, owner, self.backend.lease(), replay).await)?;
        self.acquired(claim, failed_runs, false, what)
    }

    fn busy(&self, got: Claim, what: &str) -> Result<(), ContractError> {
        self.busy_within(got, self.backend.lease(), what)
    }

    fn busy_within(&self, got: Claim, lease: Duration, what: &str) -> Result<(), ContractError> {
        match got {
            Claim::Busy { remaining } if remaining <= lease => Ok(()),
            other => Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!(
                    "{what}: expected Busy with at most {lease:?} remaining, got {other:?}"
                ),
            }),
        }
    }
}

/// Of 32 concurrent claims of one key (on several instances), exactly one wins.
///
/// The lease is long here (a minute): the scenario is about atomicity, and
/// a slow backend (new connections, a loaded machine) must not see the
/// winner's lease expire and be legitimately taken over mid-race.
pub async fn one_winner_among_concurrent_claims(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("one_winner_among_concurrent_claims", backend);
    let lease = Duration::from_secs(60);
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(run.instance().await?);
    }
    let key = run.key("race");
    let owners: Vec<String> = (0..32).map(|i| format!("owner-{i}")).collect();
    let claims = join_all(
        owners
            .iter()
            .enumerate()
            .map(|(i, owner)| stores[i % stores.len()].claim(&key, owner, lease, 0)),
    )
    .await;
    let mut winners = Vec::new();
    for claim in claims {
        match run.ok(claim)? {
            claim @ Claim::Acquired { .. } => {
                winners.push(run.acquired(claim, 0, false, "the winner of a new key")?);
            }
            other => run.busy_within(other, lease, "a losing claim")?,
        }
    }
    run.eq(winners.len(), 1, "winners among 32 concurrent claims")?;
    run.eq(
        run.ok(stores[1].complete(&key, winners[0]).await)?,
        true,
        "the winner completes",
    )?;
    run.eq(
        run.ok(stores[2].claim(&key, "late", lease, 0).await)?,
        Claim::Completed,
        "a claim after completion",
    )
}

/// A completed key is reported done, to every instance and every replay number.
pub async fn completed_key_is_done(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("completed_key_is_done", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.eq(
        run.ok(store.complete(&key, a).await)?,
        true,
        "owner completes",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::Completed,
        "duplicate",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 1).await)?,
        Claim::Completed,
        "a redriven copy of a completed key",
    )?;
    run.eq(
        run.ok(store.renew(&key, a, lease).await)?,
        false,
        "renewing a completed key",
    )?;
    let other = run.instance().await?;
    run.eq(
        run.ok(other.claim(&key, "c", lease, 0).await)?,
        Claim::Completed,
        "duplicate on another instance",
    )
}

/// A dead-lettered key skips the original's duplicates and admits only the
/// next redrive (its recorded replay number + 1), once, with a new attempt
/// count: a copy with a larger, forged replay number is a duplicate.
pub async fn dead_lettered_key_admits_only_the_next_replay(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("dead_lettered_key_admits_only_the_next_replay", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.ok(store.release(&key, a, Some(4)).await)?;
    let a = run
        .take(&store, &key, "a", 0, 4, "claim after 4 failed runs")
        .await?;
    run.eq(
        run.ok(store.mark_dead_lettered(&key, a).await)?,
        true,
        "owner dead-letters",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::DeadLettered,
        "duplicate of the original",
    )?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 9).await)?,
        Claim::DeadLettered,
        "a copy claiming replay 9 of a letter recorded at replay 0",
    )?;
    let b = run
        .take(&store, &key, "b", 1, 0, "first redrive starts a new count")
        .await?;
    run.eq(
        run.ok(store.mark_dead_lettered(&key, b).await)?,
        true,
        "the redrive dead-letters again",
    )?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 1).await)?,
        Claim::DeadLettered,
        "the same redrive again",
    )?;
    run.eq(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        Claim::DeadLettered,
        "the original again",
    )?;
    let c = run.take(&store, &key, "c", 2, 0, "second redrive").await?;
    run.eq(
        run.ok(store.complete(&key, c).await)?,
        true,
        "the second redrive succeeds",
    )?;
    run.eq(
        run.ok(store.claim(&key, "d", lease, 3).await)?,
        Claim::Completed,
        "a redrive after success",
    )
}

/// A released key can be claimed again and keeps (or updates) its attempt count.
pub async fn released_key_keeps_its_attempts(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("released_key_keeps_its_attempts", backend);
    let store = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.ok(store.release(&key, a, Some(2)).await)?;
    let b = run
        .take(&store, &key, "b", 0, 2, "claim after release(Some(2))")
        .await?;
    run.ok(store.release(&key, b, None).await)?;
    let c = run
        .take(&store, &key, "c", 0, 2, "claim after release(None)")
        .await?;
    run.ok(store.release(&key, c, Some(3)).await)?;
    let d = run
        .take(&store, &key, "d", 0, 3, "claim after release(Some(3))")
        .await?;
    run.eq(
        run.ok(store.complete(&key, d).await)?,
        true,
        "completes at last",
    )
}

/// A lease its owner renews is not taken over, even past its first expiry.
pub async fn renewed_lease_is_not_taken_over(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("renewed_lease_is_not_taken_over", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let other = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    tokio::time::sleep(lease * 2 / 3).await;
    run.eq(
        run.ok(store.renew(&key, a, lease).await)?,
        true,
        "the owner renews",
    )?;
    tokio::time::sleep(lease / 2).await;
    run.busy(
        run.ok(other.claim(&key, "b", lease, 0).await)?,
        "a claim past the first lease but within the renewed one",
    )?;
    run.eq(
        run.ok(store.complete(&key, a).await)?,
        true,
        "the owner completes",
    )
}

/// An expired lease is taken over (counted as a crashed run), and every
/// operation under the late owner's fence is refused.
pub async fn expired_lease_is_taken_over_and_late_owner_refused(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new(
        "expired_lease_is_taken_over_and_late_owner_refused",
        backend,
    );
    let lease = backend.lease();
    let store = run.instance().await?;
    let other = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.ok(store.release(&key, a, Some(1)).await)?;
    let a = run
        .take(&store, &key, "a", 0, 1, "claim after one failed run")
        .await?;
    tokio::time::sleep(lease + lease / 2).await;
    let b = run.acquired(
        run.ok(other.claim(&key, "b", lease, 0).await)?,
        2,
        true,
        "takeover of the expired lease",
    )?;
    run.eq(b > a, true, "the successor's fence is larger")?;
    run.eq(
        run.ok(store.complete(&key, a).await)?,
        false,
        "the late owner's completion",
    )?;
    run.eq(
        run.ok(store.renew(&key, a, lease).await)?,
        false,
        "the late owner's renewal",
    )?;
    run.eq(
        run.ok(store.mark_dead_lettered(&key, a).await)?,
        false,
        "the late owner's dead letter",
    )?;
    run.ok(store.release(&key, a, Some(9)).await)?;
    run.busy(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        "after the late owner's release, the new owner still holds it",
    )?;
    run.ok(other.release(&key, b, None).await)?;
    let c = run
        .take(
            &store,
            &key,
            "c",
            0,
            2,
            "the late owner's count was ignored",
        )
        .await?;
    run.eq(
        run.ok(store.complete(&key, c).await)?,
        true,
        "the new owner completes",
    )
}

/// Each takeover of an expired lease counts one crashed run; a released
/// lease (with or without a count) never counts as a crash.
pub async fn takeover_counts_a_crash_release_does_not(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("takeover_counts_a_crash_release_does_not", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.ok(store.release(&key, a, None).await)?;
    tokio::time::sleep(lease + lease / 2).await;
    let b = run
        .take(&store, &key, "b", 0, 0, "a released lease, long after")
        .await?;
    tokio::time::sleep(lease + lease / 2).await;
    let c = run.acquired(
        run.ok(store.claim(&key, "c", lease, 0).await)?,
        1,
        true,
        "first takeover",
    )?;
    run.eq(c > b, true, "fences grow")?;
    tokio::time::sleep(lease + lease / 2).await;
    let d = run.acquired(
        run.ok(store.claim(&key, "d", lease, 0).await)?,
        2,
        true,
        "second takeover",
    )?;
    run.ok(store.release(&key, d, None).await)?;
    let e = run
        .take(
            &store,
            &key,
            "e",
            0,
            2,
            "a claim after a release is no suspect",
        )
        .await?;
    run.eq(run.ok(store.complete(&key, e).await)?, true, "completes")
}

/// A fence from an earlier lease of the same key is refused after the key
/// was released and claimed again, even by the same owner name.
pub async fn stale_fences_are_refused(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("stale_fences_are_refused", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let first = run.take(&store, &key, "w", 0, 0, "first claim").await?;
    run.ok(store.release(&key, first, None).await)?;
    let second = run
        .take(&store, &key, "w", 0, 0, "same owner again")
        .await?;
    run.eq(second > first, true, "a new lease has a larger fence")?;
    run.eq(
        run.ok(store.renew(&key, first, lease).await)?,
        false,
        "renewal under the old fence",
    )?;
    run.eq(
        run.ok(store.complete(&key, first).await)?,
        false,
        "completion under the old fence",
    )?;
    run.eq(
        run.ok(store.mark_dead_lettered(&key, first).await)?,
        false,
        "dead letter under the old fence",
    )?;
    run.ok(store.release(&key, first, Some(5)).await)?;
    run.busy(
        run.ok(store.claim(&key, "x", lease, 0).await)?,
        "a release under the old fence leaves the lease",
    )?;
    run.eq(
        run.ok(store.complete(&key, second).await)?,
        true,
        "the current fence completes",
    )
}

/// Renew, complete and dead-letter by someone who never held the lease are refused.
pub async fn non_owner_cannot_settle(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("non_owner_cannot_settle", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let key = run.key("k");
    let absent = run.key("absent");
    let stranger = Fence(u64::MAX >> 12);
    run.eq(
        run.ok(store.renew(&absent, stranger, lease).await)?,
        false,
        "renewing an absent key",
    )?;
    run.eq(
        run.ok(store.complete(&absent, stranger).await)?,
        false,
        "completing an absent key",
    )?;
    run.ok(store.release(&absent, stranger, Some(1)).await)?;
    run.take(
        &store,
        &absent,
        "y",
        0,
        0,
        "a release of an absent key creates nothing",
    )
    .await?;
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    for fence in [stranger, Fence(0), Fence(a.0.wrapping_sub(1))] {
        run.eq(
            run.ok(store.renew(&key, fence, lease).await)?,
            false,
            "a stranger's renewal",
        )?;
        run.eq(
            run.ok(store.complete(&key, fence).await)?,
            false,
            "a stranger's completion",
        )?;
        run.eq(
            run.ok(store.mark_dead_lettered(&key, fence).await)?,
            false,
            "a stranger's dead letter",
        )?;
    }
    run.busy(
        run.ok(store.claim(&key, "x", lease, 0).await)?,
        "the owner still holds the key",
    )?;
    run.eq(
        run.ok(store.renew(&key, a, lease).await)?,
        true,
        "the owner's renewal",
    )?;
    run.eq(
        run.ok(store.complete(&key, a).await)?,
        true,
        "the owner's completion",
    )
}

/// Failed runs recorded through one instance are seen by a new one.
pub async fn attempts_survive_a_new_instance(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("attempts_survive_a_new_instance", backend);
    let key = run.key("k");
    {
        let first = run.instance().await?;
        let a = run.take(&first, &key, "a", 0, 0, "first claim").await?;
        run.ok(first.release(&key, a, Some(3)).await)?;
    }
    let second = run.instance().await?;
    let b = run
        .take(&second, &key, "b", 0, 3, "claim on a new instance")
        .await?;
    run.eq(run.ok(second.complete(&key, b).await)?, true, "completes")
}

/// `claim_many`, `renew_many` and `complete_many` answer one result per
/// item, in order, exactly as the single-key operations would.
pub async fn batches_answer_per_item(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("batches_answer_per_item", backend);
    // Long: the scenario is about answers per item, not about expiry.
    let lease = Duration::from_secs(60);
    let store = run.instance().await?;
    let [done, held, free, dead] = ["done", "held", "free", "dead"].map(|k| run.key(k));
    let setup = |claim| run.acquired(claim, 0, false, "setup");
    let d = setup(run.ok(store.claim(&done, "a", lease, 0).await)?)?;
    run.ok(store.complete(&done, d).await)?;
    let h = setup(run.ok(store.claim(&held, "a", lease, 0).await)?)?;
    let x = setup(run.ok(store.claim(&dead, "a", lease, 0).await)?)?;
    run.ok(store.mark_dead_lettered(&dead, x).await)?;
    let claims = [&done, &held, &free, &dead, &free].map(|key| ClaimOf {
        key,
        owner: "b",
        replay: 0,
    });
    let answers = store.claim_many(&claims, lease).await;
    run.eq(answers.len(), 5, "one claim answer per item")?;
    let mut answers = answers.into_iter().map(|a| run.ok(a));
    let mut next = || answers.next().unwrap_or(Ok(Claim::Completed));
    run.eq(next()?, Claim::Completed, "batch: a completed key")?;
    run.busy_within(next()?, lease, "batch: a held key")?;
    let (first, second) = (next()?, next()?);
    run.eq(second, Claim::DeadLettered, "batch: a dead letter")?;
    let third = next()?;
    // The same free key twice in one batch: one wins, the other finds it held.
    let (won, lost) = if matches!(first, Claim::Acquired { .. }) {
        (first, third)
    } else {
        (third, first)
    };
    let f = run.acquired(won, 0, false, "batch: a free key")?;
    run.busy_within(lost, lease, "batch: the same free key again")?;
    let absent = run.key("absent");
    let leases = [
        Held {
            key: &held,
            fence: h,
        },
        Held {
            key: &free,
            fence: f,
        },
        Held {
            key: &done,
            fence: d,
        },
        Held {
            key: &absent,
            fence: f,
        },
        Held {
            key: &free,
            fence: h,
        },
    ];
    let renewed: Result<Vec<bool>, _> = store
        .renew_many(&leases, lease)
        .await
        .into_iter()
        .map(|r| run.ok(r))
        .collect();
    run.eq(
        renewed?,
        vec![true, true, false, false, false],
        "renew_many: held, held, completed, absent, wrong fence",
    )?;
    let completed: Result<Vec<bool>, _> = store
        .complete_many(&leases)
        .await
        .into_iter()
        .map(|r| run.ok(r))
        .collect();
    run.eq(
        completed?,
        vec![true, true, false, false, false],
        "complete_many: held, held, completed, absent, wrong fence",
    )?;
    for key in [&held, &free] {
        run.eq(
            run.ok(store.claim(key, "c", lease, 0).await)?,
            Claim::Completed,
            "completed by the batch",
        )?;
    }
    run.eq(
        store.claim_many(&[], lease).await.len(),
        0,
        "an empty batch",
    )
}

/// A completed key is forgotten after the TTL: a new copy runs again.
pub async fn completed_keys_expire_after_ttl(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("completed_keys_expire_after_ttl", backend);
    let lease = backend.lease();
    let ttl = backend.ttl();
    let store = run.instance().await?;
    let key = run.key("k");
    let a = run.take(&store, &key, "a", 0, 0, "first claim").await?;
    run.ok(store.release(&key, a, Some(2)).await)?;
    let a = run.take(&store, &key, "a", 0, 2, "claim again").await?;
    run.eq(run.ok(store.complete(&key, a).await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&key, "b", lease, 0).await)?,
        Claim::Completed,
        "a duplicate within the TTL",
    )?;
    tokio::time::sleep(ttl + ttl / 2 + Duration::from_millis(100)).await;
    let b = run
        .take(
            &store,
            &key,
            "b",
            0,
            0,
            "a copy after the TTL starts afresh",
        )
        .await?;
    run.eq(
        run.ok(store.complete(&key, b).await)?,
        true,
        "completes again",
    )
}

/// Keys over [`MAX_KEY_LEN`] bytes are stored hashed; odd characters are kept as they are.
pub async fn long_and_odd_keys_work(backend: &dyn Backend) -> Result<(), ContractError> {
    let run = Run::new("long_and_odd_keys_work", backend);
    let lease = backend.lease();
    let store = run.instance().await?;
    let raw = format!("{}{}", run.key("long").as_str(), "k".repeat(300));
    let long = Key::new(&raw);
    run.eq(
        long.as_str().starts_with("sha256:"),
        true,
        "a long key is hashed",
    )?;
    run.eq(
        long.as_str().len() <= MAX_KEY_LEN,
        true,
        "a hashed key fits",
    )?;
    let a = run
        .take(&store, &long, "a", 0, 0, "claim of a long key")
        .await?;
    run.eq(run.ok(store.complete(&long, a).await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&Key::new(&raw), "b", lease, 0).await)?,
        Claim::Completed,
        "the same long key",
    )?;
    let sibling = Key::new(&format!("{raw}x"));
    run.take(&store, &sibling, "b", 0, 0, "a long key one byte longer")
        .await?;
    let odd = run.key("odd 'quote' \"dq\" ; -- % _ \\ {tag} * ? [x] ünï 🦀\n\0 nul");
    let a = run
        .take(&store, &odd, "a", 0, 0, "claim of an odd key")
        .await?;
    run.eq(run.ok(store.complete(&odd, a).await)?, true, "completes")?;
    run.eq(
        run.ok(store.claim(&odd, "b", lease, 0).await)?,
        Claim::Completed,
        "the same odd key",
    )
}

/// A failure whose letter is to be kept: its text fills [`MAX_LETTER_TEXT`]
/// with multi-byte characters and quoting, its times are whole milliseconds.
fn pending_failure(kind: ErrorKind, attempts: u32) -> Failure {
    let unit = "délai dépassé 'quoted' \"double\" %s {} -- ; ";
    let mut message = String::new();
    while message.len() + unit.len() <= MAX_LETTER_TEXT {
        message.push_str(unit);
    }
    while message.len() < MAX_LETTER_TEXT {
        message.push('x');
    }
    let ms = |n: u64| std::time::UNIX_EPOCH + Duration::from_millis(n);
    Failure {
        kind,
        message,
        attempts,
        first_failure: ms(1_764_000_000_123),
        last_failure: ms(1_764_000_042_456),
    }
}

impl Run<'_> {
    /// The fence of a `LetterPending` claim with `failed_runs` and `letter`.
    fn pending(
        &self,
        got: Claim,
        failed_runs: u32,
        want: &Failure,
        what: &str,
    ) -> Result<Fence, ContractError> {
        match got {
            Claim::LetterPending {
                fence,
                failed_runs: f,
                letter,
            } if f == failed_runs && letter == *want => Ok(fence),
            other => Err(ContractError::Violated {
                scenario: self.scenario,
                what: format!(
                    "{what}: expected LetterPending with {failed_runs} failed runs and {want:?}, got {other:?}"
                ),
            }),
        }
    }
}

/// A letter recorded as pending under a lease is reported, with its kind,
/// text, attempts and times, by every later claim on any instance (a
/// release keeps it) until the key is dead-lettered; a stale fence cannot
/// record one, and a newer redrive starts without it.
pub async fn pending_letter_survives_a_new_instance(
    backend: &dyn Backend,
) -> Result<(), ContractError> {
    let run = Run::new("pending_letter_survives_a_new_instance", backend);
    let key = run.key("k");
    let letter = pending_failure(ErrorKind::Timeout, 3);
    let a = {
        let first = run.instance().await?;
        let a = run.take(&first, &key, "a", 0, 0, "first claim").await?;
        let kept = run.ok(first.release_with_letter(&key, a, &letter).await)?;
        if !backend.keeps_pending_letters() {
            let second = run.instance().await?;
            let b = run
                .take(
                    &second,
                    &key,
                    "b",
                    0,
                    3,
                    "claim after a letter the store does not keep",
                )
                .await?;
            return run.eq(run.ok(second.complete(&key, b).await)?, true, "completes");
        }
        run.eq(kept, true, "the owner records the pending letter")?;
        run.eq(
            run.ok(first.release_with_letter(&key, a, &letter).await)?,
            false,
            "a lease given up cannot record a letter",
        )?;
        a
    };
    let second = run.instance().await?;
    let lease = backend.lease();
    let b = run.pending(
        run.ok(second.claim(&key, "b", lease, 0).await)?,
        3,
        &letter,
        "claim on a new instance",
    )?;
    run.eq(b > a, true, "the pending letter's claim has a newer fence")?;
    run.busy(
        run.ok(second.claim(&key, "c", lease, 0).await)?,
        "while the letter's lease is held",
    )?;
    run.ok(second.release(&key, b, None).await)?;
    let c = run.pending(
        run.ok(second.claim(&key, "c", lease, 0).await)?,
        3,
        &letter,
        "claim after a release",
    )?;
    run.eq(
        run.ok(second.release_with_letter(&key, c, &letter).await)?,
        true,
        "a failed write again",
    )?;
    let d = run.pending(
        run.ok(second.claim(&key, "d", lease, 0).await)?,
        3,
        &letter,
        "claim after a second failed write",
    )?;
    run.eq(
        run.ok(second.mark_dead_lettered(&key, d).await)?,
        true,
        "the letter written",
    )?;
    run.eq(
        run.ok(second.claim(&key, "e", lease, 0).await)?,
        Claim::DeadLettered,
        "after the letter was written",
    )?;
    let e = run
        .take(
            &second,
            &key,
            "e",
            1,
            0,
            "the next redrive starts without a letter",
        )
        .await?;
    run.ok(second.complete(&key, e).await)?;

    let other = run.key("redriven");
    let panic = pending_failure(ErrorKind::Panic, 1);
    let f = run.take(&second, &other, "f", 0, 0, "other key").await?;
    run.eq(
        run.ok(second.release_with_letter(&other, f, &panic).await)?,
        true,
        "other key's letter",
    )?;
    let g = run.pending(
        run.ok(second.claim(&other, "g", lease, 0).await)?,
        1,
        &panic,
        "other key's letter, same redrive",
    )?;
    run.ok(second.release(&other, g, None).await)?;
    run.take(
        &second,
        &other,
        "h",
        1,
        0,
        "a newer redrive starts without the letter",
    )
    .await
    .map(drop)
}
