use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Fence, Key, Store};
use crate::{Failure, StoreError};

/// An in-process [`Store`]: bounded, with a TTL for finished keys.
///
/// It is lost when the process dies and is not shared between workers; use
/// the Redis or PostgreSQL stores for that. When full, the oldest finished
/// keys are evicted first (their duplicates are then no longer detected); a
/// store full of live leases refuses new keys with [`StoreError::Full`].
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

/// A seeded fast hasher: keys come from messages, so the seed is random per
/// process (no hash flooding), but SipHash's cost is not needed.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry, Hasher>,
    order: VecDeque<Key>,
    /// The last fencing token handed out (tokens grow across all keys).
    fence: u64,
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    failed_runs: u32,
    replay: u32,
    expires: Instant,
    /// The failure of a dead letter still to be written ([`Store::defer_letter`]).
    letter: Option<Failure>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Held under `fence` (the owner's name is not kept: the fence is what
    /// a later call is checked against).
    InProgress {
        fence: Fence,
        lease_until: Instant,
    },
    Completed,
    DeadLettered,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(100_000, Duration::from_secs(24 * 3600))
    }
}

impl MemoryStore {
    /// A store of at most `capacity` keys; finished keys are forgotten after `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// How many keys the store holds now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave an entry half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on `key`'s entry if it is in progress under `fence`.
    fn with_fence<R>(
        &self,
        key: &Key,
        fence: Fence,
        f: impl FnOnce(&mut Entry, Instant) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state.entries.get_mut(key)?;
        match &entry.phase {
            Phase::InProgress { fence: held, .. } if *held == fence => Some(f(entry, now)),
            _ => None,
        }
    }
    /// [`Store::claim`], which never waits here.
    fn claim_at_once(&self, key: &Key, lease: Duration, replay: u32) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let fence = Fence(state.fence + 1);
        let taken = Phase::InProgress {
            fence,
            lease_until: now + lease,
        };
        if let Some(entry) = state.entries.get_mut(key) {
            let live = entry.expires > now || matches!(entry.phase, Phase::InProgress { .. });
            if live {
                let newer = replay > entry.replay;
                let crashed = match &entry.phase {
                    Phase::Completed => return Ok(Claim::Completed),
                    Phase::DeadLettered if replay != entry.replay.saturating_add(1) => {
                        return Ok(Claim::DeadLettered);
                    }
                    Phase::InProgress { lease_until, .. } if *lease_until > now => {
                        return Ok(Claim::Busy {
                            remaining: *lease_until - now,
                        });
                    }
                    Phase::InProgress { .. } => true,
                    Phase::Idle | Phase::DeadLettered => false,
                };
                if newer {
                    entry.failed_runs = 0;
                    entry.replay = replay;
                    entry.letter = None;
                } else if crashed {
                    entry.failed_runs = entry.failed_runs.saturating_add(1);
                }
                entry.phase = taken;
                let failed_runs = entry.failed_runs;
                let letter = entry.letter.clone();
                state.fence = fence.0;
                if let Some(letter) = letter {
                    return Ok(Claim::LetterPending {
                        fence,
                        failed_runs,
                        letter,
                    });
                }
                return Ok(Claim::Acquired {
                    fence,
                    failed_runs,
                    crashed,
                });
            }
            // Expired: start over in place (its place in the eviction order stays).
            *entry = Entry {
                phase: taken,
                failed_runs: 0,
                replay,
                expires: now + self.ttl,
                letter: None,
            };
            state.fence = fence.0;
            return Ok(Claim::Acquired {
                fence,
                failed_runs: 0,
                crashed: false,
            });
        }
        state.make_room(self.capacity)?;
        state.entries.insert(
            key.clone(),
            Entry {
                phase: taken,
                failed_runs: 0,
                replay,
                expires: now + self.ttl,
                letter: None,
            },
        );
        state.order.push_back(key.clone());
        state.fence = fence.0;
        Ok(Claim::Acquired {
            fence,
            failed_runs: 0,
            crashed: false,
        })
    }

    /// Settles the lease `fence` on `key` for good as `phase` (completed or
    /// dead-lettered); never waits here.
    fn finish_at_once(&self, key: &Key, fence: Fence, phase: Phase) -> Result<bool, StoreError> {
        let ttl = self.ttl;
        Ok(self
            .with_fence(key, fence, |e, now| {
                e.phase = phase;
                e.letter = None;
                e.expires = now + ttl;
            })
            .is_some())
    }
}

impl State {
    /// Evicts the oldest finished (or expired) keys down to 90 % of
    /// `capacity`, so a full store pays for eviction once per tenth of its
    /// capacity, not on every claim. Live leases are never evicted.
    fn make_room(&mut self, capacity: usize) -> Result<(), StoreError> {
        if self.entries.len() < capacity {
            return Ok(());
        }
        let target = capacity - capacity / 10 - 1;
        let mut scanned = 0;
        let limit = self.order.len();
        while self.entries.len() > target && scanned < limit {
            let Some(key) = self.order.pop_front() else {
                break;
            };
            scanned += 1;
            match self.entries.get(&key) {
                Some(e) if matches!(e.phase, Phase::InProgress { .. }) => self.order.push_back(key),
                Some(_) => {
                    self.entries.remove(&key);
                }
                None => {}
            }
        }
        if self.entries.len() >= capacity {
            return Err(StoreError::Full { capacity });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &Key,
        _owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        self.claim_at_once(key, lease, replay)
    }

    fn claim_now(
        &self,
        key: &Key,
        _owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Option<Result<Claim, StoreError>> {
        Some(self.claim_at_once(key, lease, replay))
    }

    async fn renew(&self, key: &Key, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        Ok(self
            .with_fence(key, fence, |e, now| {
                if let Phase::InProgress { lease_until, .. } = &mut e.phase {
                    *lease_until = now + lease;
                }
            })
            .is_some())
    }

    async fn complete(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.finish_at_once(key, fence, Phase::Completed)
    }

    fn complete_now(&self, key: &Key, fence: Fence) -> Option<Result<bool, StoreError>> {
        Some(self.finish_at_once(key, fence, Phase::Completed))
    }

    async fn dead_letter(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
        self.finish_at_once(key, fence, Phase::DeadLettered)
    }

    async fn release(
        &self,
        key: &Key,
        fence: Fence,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let ttl = self.ttl;
        self.with_fence(key, fence, |e, now| {
            e.phase = Phase::Idle;
            if let Some(n) = failed_runs {
                e.failed_runs = n;
            }
            e.expires = now + ttl;
        });
        Ok(())
    }

    async fn defer_letter(
        &self,
        key: &Key,
        fence: Fence,
        letter: &Failure,
    ) -> Result<bool, StoreError> {
        let ttl = self.ttl;
        Ok(self
            .with_fence(key, fence, |e, now| {
                e.phase = Phase::Idle;
                e.failed_runs = letter.attempts;
                e.letter = Some(letter.clone());
                e.expires = now + ttl;
            })
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    /// The fence of an acquired claim; panics otherwise.
    fn got(claim: Claim, failed: u32, crashed: bool) -> Fence {
        match claim {
            Claim::Acquired {
                fence,
                failed_runs,
                crashed: c,
            } if failed_runs == failed && c == crashed => fence,
            other => panic!("expected Acquired({failed}, crashed {crashed}), got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_state_machine() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
        assert!(matches!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Busy { .. }
        ));
        s.release(&k, a, Some(2)).await.unwrap();
        let b = got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 2, false);
        assert!(b > a, "fences grow");
        assert!(!s.complete(&k, a).await.unwrap(), "a gave the lease up");
        assert!(s.complete(&k, b).await.unwrap());
        assert_eq!(s.claim(&k, "c", LEASE, 0).await.unwrap(), Claim::Completed);
        assert_eq!(s.claim(&k, "c", LEASE, 1).await.unwrap(), Claim::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_is_taken_over_as_a_crash_and_late_owner_refused() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
        tokio::time::advance(LEASE / 2).await;
        assert!(s.renew(&k, a, LEASE).await.unwrap());
        tokio::time::advance(LEASE * 3 / 4).await;
        assert!(
            matches!(
                s.claim(&k, "b", LEASE, 0).await.unwrap(),
                Claim::Busy { .. }
            ),
            "renewed lease holds"
        );
        tokio::time::advance(LEASE).await;
        let b = got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 1, true);
        assert!(!s.complete(&k, a).await.unwrap(), "late owner refused");
        assert!(!s.renew(&k, a, LEASE).await.unwrap());
        assert!(s.complete(&k, b).await.unwrap());
    }

    #[test]
    fn answers_at_once_what_the_async_calls_answer() {
        // `claim_now` / `complete_now` are what the idempotency layer calls
        // first: the same state machine, with no future.
        let s = MemoryStore::default();
        let k = Key::new("k");
        let now = |c: Option<Result<Claim, StoreError>>| c.expect("answered at once").unwrap();
        let a = got(now(s.claim_now(&k, "a", LEASE, 0)), 0, false);
        assert!(matches!(
            now(s.claim_now(&k, "b", LEASE, 0)),
            Claim::Busy { .. }
        ));
        assert!(
            !s.complete_now(&k, Fence(a.0 + 1)).unwrap().unwrap(),
            "not the holder's fence"
        );
        assert!(s.complete_now(&k, a).unwrap().unwrap());
        assert!(matches!(
            now(s.claim_now(&k, "c", LEASE, 0)),
            Claim::Completed
        ));
        let other = Key::new("other");
        let b = got(now(s.claim_now(&other, "a", LEASE, 0)), 0, false);
        assert!(b > a, "fences grow across keys");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            rt.block_on(s.complete(&other, b)).unwrap(),
            "the async call sees the same lease"
        );
        assert!(matches!(
            rt.block_on(s.claim(&other, "c", LEASE, 0)).unwrap(),
            Claim::Completed
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn dead_lettered_key_admits_only_the_next_replay_once() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
        s.release(&k, a, Some(4)).await.unwrap();
        let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 4, false);
        assert!(s.dead_letter(&k, a).await.unwrap());
        assert_eq!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::DeadLettered
        );
        assert_eq!(
            s.claim(&k, "b", LEASE, 7).await.unwrap(),
            Claim::DeadLettered,
            "a forged, larger replay number is not a redrive of this letter"
        );
        let b = got(s.claim(&k, "b", LEASE, 1).await.unwrap(), 0, false);
        assert!(s.dead_letter(&k, b).await.unwrap());
        assert_eq!(
            s.claim(&k, "c", LEASE, 1).await.unwrap(),
            Claim::DeadLettered,
            "once per replay"
        );
        got(s.claim(&k, "c", LEASE, 2).await.unwrap(), 0, false);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_keys_expire_after_ttl() {
        let s = MemoryStore::new(10, Duration::from_secs(60));
        let k = Key::new("k");
        let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
        s.complete(&k, a).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 0, false);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_finished_keys_and_refuses_when_all_are_live() {
        let s = MemoryStore::new(2, Duration::from_secs(3600));
        let mut fences = Vec::new();
        for i in 0..2 {
            let k = Key::new(&format!("k{i}"));
            fences.push(got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false));
        }
        assert!(matches!(
            s.claim(&Key::new("k2"), "a", LEASE, 0).await,
            Err(StoreError::Full { capacity: 2 })
        ));
        s.complete(&Key::new("k0"), fences[0]).await.unwrap();
        assert!(s.claim(&Key::new("k2"), "a", LEASE, 0).await.is_ok());
        assert_eq!(s.len(), 2);
    }

    #[tokio::test]
    async fn concurrent_claims_have_one_winner() {
        let s = std::sync::Arc::new(MemoryStore::default());
        let k = Key::new("race");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let (s, k) = (s.clone(), k.clone());
            tasks.spawn(async move { s.claim(&k, &format!("o{i}"), LEASE, 0).await });
        }
        let mut winners = 0;
        while let Some(r) = tasks.join_next().await {
            if matches!(r.unwrap().unwrap(), Claim::Acquired { .. }) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
