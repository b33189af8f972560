//! What the spool holds, counted in memory: records and bytes in all, and
//! records per ordering unit. Rebuilt from the file at open; changed only
//! after a commit, so it never claims more (or less) than the file has.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::record::Unit;

/// Counts of what the spool holds.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    records: u64,
    bytes: u64,
    units: HashMap<Unit, u64>,
}

impl Counts {
    pub(crate) fn add(&mut self, unit: Unit, records: u64, bytes: u64) {
        self.records += records;
        self.bytes = self.bytes.saturating_add(bytes);
        *self.units.entry(unit).or_insert(0) += records;
    }
}

/// The shared counts and the wake-ups around them.
#[derive(Debug, Default)]
pub(crate) struct State {
    counts: Mutex<Counts>,
    /// Records were added (the relay waits on it when idle).
    pub(crate) arrived: Notify,
    /// Records were removed (full writers and flushes wait on it).
    pub(crate) removed: Notify,
    /// The highest `seq` written (the relay's pass bound).
    pub(crate) high: std::sync::atomic::AtomicU64,
}

impl State {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn reset(&self, counts: Counts) {
        *self.counts() = counts;
    }

    /// Records and bytes in the spool.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let c = self.counts();
        (c.records, c.bytes)
    }

    /// Records of `unit` in the spool.
    pub(crate) fn pending(&self, unit: &Unit) -> u64 {
        self.counts().units.get(unit).copied().unwrap_or(0)
    }

    /// Counts added records (the caller wakes the waiters once its gauges are set).
    pub(crate) fn added(&self, records: impl IntoIterator<Item = (Unit, u64)>) {
        let mut c = self.counts();
        for (unit, size) in records {
            c.add(unit, 1, size);
        }
    }

    /// Counts removed records (the caller wakes the waiters once its gauges are set).
    pub(crate) fn removed(&self, records: impl IntoIterator<Item = (Unit, u64)>) {
        {
            let mut c = self.counts();
            for (unit, size) in records {
                c.records = c.records.saturating_sub(1);
                c.bytes = c.bytes.saturating_sub(size);
                if let Some(n) = c.units.get_mut(&unit) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        c.units.remove(&unit);
                    }
                }
            }
        }
    }
}
