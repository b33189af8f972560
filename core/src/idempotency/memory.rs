use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Key, Store};
use crate::StoreError;

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
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    failed_runs: u32,
    replay: u32,
    expires: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    InProgress { owner: String, lease_until: Instant },
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

    fn with_owner<R>(
        &self,
        key: &Key,
        owner: &str,
        f: impl FnOnce(&mut Entry, Instant) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state.entries.get_mut(key)?;
        match &entry.phase {
            Phase::InProgress { owner: o, .. } if o == owner => Some(f(entry, now)),
            _ => None,
        }
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
        owner: &str,
        lease: Duration,
        replay: u32,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let taken = Phase::InProgress {
            owner: owner.to_owned(),
            lease_until: now + lease,
        };
        if let Some(entry) = state.entries.get_mut(key) {
            let live = entry.expires > now || matches!(entry.phase, Phase::InProgress { .. });
            if live {
                let newer = replay > entry.replay;
                match &entry.phase {
                    Phase::Completed => return Ok(Claim::Completed),
                    Phase::DeadLettered if !newer => return Ok(Claim::DeadLettered),
                    Phase::InProgress { lease_until, .. } if *lease_until > now => {
                        return Ok(Claim::Busy {
                            remaining: *lease_until - now,
                        });
                    }
                    _ => {}
                }
                if newer {
                    entry.failed_runs = 0;
                    entry.replay = replay;
                }
                entry.phase = taken;
                return Ok(Claim::Acquired {
                    failed_runs: entry.failed_runs,
                });
            }
            // Expired: start over in place (its place in the eviction order stays).
            *entry = Entry {
                phase: taken,
                failed_runs: 0,
                replay,
                expires: now + self.ttl,
            };
            return Ok(Claim::Acquired { failed_runs: 0 });
        }
        state.make_room(self.capacity)?;
        state.entries.insert(
            key.clone(),
            Entry {
                phase: taken,
                failed_runs: 0,
                replay,
                expires: now + self.ttl,
            },
        );
        state.order.push_back(key.clone());
        Ok(Claim::Acquired { failed_runs: 0 })
    }

    async fn renew(&self, key: &Key, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        Ok(self
            .with_owner(key, owner, |e, now| {
                e.phase = Phase::InProgress {
                    owner: owner.to_owned(),
                    lease_until: now + lease,
                };
            })
            .is_some())
    }

    async fn complete(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        let ttl = self.ttl;
        Ok(self
            .with_owner(key, owner, |e, now| {
                e.phase = Phase::Completed;
                e.expires = now + ttl;
            })
            .is_some())
    }

    async fn dead_letter(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        let ttl = self.ttl;
        Ok(self
            .with_owner(key, owner, |e, now| {
                e.phase = Phase::DeadLettered;
                e.expires = now + ttl;
            })
            .is_some())
    }

    async fn release(
        &self,
        key: &Key,
        owner: &str,
        failed_runs: Option<u32>,
    ) -> Result<(), StoreError> {
        let ttl = self.ttl;
        self.with_owner(key, owner, |e, now| {
            e.phase = Phase::Idle;
            if let Some(n) = failed_runs {
                e.failed_runs = n;
            }
            e.expires = now + ttl;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn lease_state_machine() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        assert_eq!(
            s.claim(&k, "a", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 0 }
        );
        assert!(matches!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Busy { .. }
        ));
        s.release(&k, "a", Some(2)).await.unwrap();
        assert_eq!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 2 }
        );
        assert!(!s.complete(&k, "a").await.unwrap(), "a gave the lease up");
        assert!(s.complete(&k, "b").await.unwrap());
        assert_eq!(s.claim(&k, "c", LEASE, 0).await.unwrap(), Claim::Completed);
        assert_eq!(s.claim(&k, "c", LEASE, 1).await.unwrap(), Claim::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_is_taken_over_and_late_owner_refused() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        s.claim(&k, "a", LEASE, 0).await.unwrap();
        tokio::time::advance(LEASE / 2).await;
        assert!(s.renew(&k, "a", LEASE).await.unwrap());
        tokio::time::advance(LEASE * 3 / 4).await;
        assert!(
            matches!(
                s.claim(&k, "b", LEASE, 0).await.unwrap(),
                Claim::Busy { .. }
            ),
            "renewed lease holds"
        );
        tokio::time::advance(LEASE).await;
        assert_eq!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 0 }
        );
        assert!(!s.complete(&k, "a").await.unwrap(), "late owner refused");
        assert!(!s.renew(&k, "a", LEASE).await.unwrap());
        assert!(s.complete(&k, "b").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn dead_lettered_key_admits_each_newer_replay_once() {
        let s = MemoryStore::default();
        let k = Key::new("k");
        s.claim(&k, "a", LEASE, 0).await.unwrap();
        s.release(&k, "a", Some(4)).await.unwrap();
        s.claim(&k, "a", LEASE, 0).await.unwrap();
        assert!(s.dead_letter(&k, "a").await.unwrap());
        assert_eq!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::DeadLettered
        );
        assert_eq!(
            s.claim(&k, "b", LEASE, 1).await.unwrap(),
            Claim::Acquired { failed_runs: 0 },
            "a redrive starts a new count"
        );
        assert!(s.dead_letter(&k, "b").await.unwrap());
        assert_eq!(
            s.claim(&k, "c", LEASE, 1).await.unwrap(),
            Claim::DeadLettered,
            "once per replay"
        );
        assert!(matches!(
            s.claim(&k, "c", LEASE, 2).await.unwrap(),
            Claim::Acquired { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_keys_expire_after_ttl() {
        let s = MemoryStore::new(10, Duration::from_secs(60));
        let k = Key::new("k");
        s.claim(&k, "a", LEASE, 0).await.unwrap();
        s.complete(&k, "a").await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Acquired { failed_runs: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_finished_keys_and_refuses_when_all_are_live() {
        let s = MemoryStore::new(2, Duration::from_secs(3600));
        for i in 0..2 {
            let k = Key::new(&format!("k{i}"));
            s.claim(&k, "a", LEASE, 0).await.unwrap();
        }
        assert!(matches!(
            s.claim(&Key::new("k2"), "a", LEASE, 0).await,
            Err(StoreError::Full { capacity: 2 })
        ));
        s.complete(&Key::new("k0"), "a").await.unwrap();
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
