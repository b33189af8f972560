//! [`MemoryStore`]: the in-process idempotency store, bounded, with a TTL
//! for finished keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Fence, Key, Store};
use crate::error::{Failure, StoreError};

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
    /// The failure of a dead letter still to be written ([`Store::release_with_letter`]);
    /// boxed, as it is rare: every entry is smaller for it.
    letter: Option<Box<Failure>>,
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

/// The most keys [`MemoryStore::new`] makes room for up front.
const RESERVE_AT_MOST: usize = 1 << 20;

impl MemoryStore {
    /// A store of at most `capacity` keys; finished keys are forgotten after `ttl`.
    ///
    /// Room for `capacity` keys (at most 2²⁰) is reserved at once: a
    /// consumer's store fills up to its capacity and stays there (finished
    /// keys live for `ttl`), and a table that grew while filling would move
    /// every key it held while the store's lock is taken, stalling every
    /// message in flight. Of the reservation only the table's control
    /// bytes (one a slot) are written at once; the rest is address space,
    /// touched as keys arrive (about 100 bytes a key: 10 MB for the
    /// default 100,000, 170 MB at most; where address space is limited,
    /// `ulimit -v` or strict overcommit, give a capacity that fits).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let room = capacity.min(RESERVE_AT_MOST);
        MemoryStore {
            state: Mutex::new(State {
                entries: HashMap::with_capacity_and_hasher(room, Hasher::default()),
                order: VecDeque::with_capacity(room),
                fence: 0,
            }),
            capacity,
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
                let letter = entry.letter.as_deref().cloned();
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

    /// False: a lease here is checked by its fence alone.
    fn keeps_owner(&self) -> bool {
        false
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

    async fn mark_dead_lettered(&self, key: &Key, fence: Fence) -> Result<bool, StoreError> {
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

    async fn release_with_letter(
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
                e.letter = Some(Box::new(letter.clone()));
                e.expires = now + ttl;
            })
            .is_some())
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
