//! [`KeyLayout`] (the user's choice) and [`Layout`] (what a shared store is
//! in): the safe upgrade from the first release's global keys to
//! per-consumer [`Keyspace`](super::Keyspace)s.
//!
//! The first release stored every key as given, in one global keyspace per
//! store. This release puts each consumer's keys in its keyspace, and marks
//! a shared store it uses with a *layout marker* (a key in Redis, a row in
//! PostgreSQL's `backstop_schema_version`). On start a shared store reads
//! the marker; a store with backstop keys and no marker was filled by the
//! first release, and the worker refuses it ([`LayoutError::Unmarked`])
//! unless the user chose [`KeyLayout::Legacy`] or [`KeyLayout::Migrate`].

use std::time::{Duration, SystemTime};

/// How a worker treats a shared store's key layout; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLayout {
    /// Per-consumer keyspaces (the default). A store without a marker and
    /// without backstop keys is marked; one with keys of the first release
    /// is refused.
    #[default]
    Keyspaced,
    /// Keep the first release's global layout: keys as given, no marker
    /// written. Refused on a store already marked.
    Legacy,
    /// Upgrade: per-consumer keyspaces, and for `window` from the first
    /// migrating start (recorded in the marker, so every worker shares one
    /// deadline) the legacy key of each message is read and held as well:
    /// a key completed or dead-lettered in either layout is a duplicate
    /// (and is recorded in the new one), a key a worker of the first release
    /// holds is busy, and a run holds both leases, so a mixed old/new pair
    /// of workers never runs one key at once. Keep the window longer than
    /// the rolling deploy and the store's TTL.
    Migrate {
        /// How long both layouts are read.
        window: Duration,
    },
}

/// The layout a shared store is in, as its marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The first release's global keys.
    Legacy,
    /// Per-consumer keyspaces.
    Keyspaced,
    /// Per-consumer keyspaces, the legacy keys read and held as well until `until`.
    Migrating {
        /// The end of the window (the store's clock).
        until: SystemTime,
    },
}

impl Layout {
    /// True if keys go into their consumer's keyspace.
    pub fn keyspaced(&self) -> bool {
        !matches!(self, Layout::Legacy)
    }

    /// True if the legacy key of a message is read and held as well at `now`.
    pub fn reads_legacy(&self, now: SystemTime) -> bool {
        matches!(self, Layout::Migrating { until } if now < *until)
    }

    /// [`reads_legacy`](Self::reads_legacy) now, the clock read only
    /// during a migration window (every message asks).
    pub(crate) fn reads_legacy_now(&self) -> bool {
        matches!(self, Layout::Migrating { .. }) && self.reads_legacy(SystemTime::now())
    }
}

/// What a store does on start, given the user's choice and what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutAction {
    /// Use this layout; write nothing.
    Use(Layout),
    /// Write the marker of per-consumer keyspaces (if still absent), then
    /// use what the marker says.
    MarkKeyspaced,
    /// Write a migration marker ending `window` from now on the store's
    /// clock (if still absent), then use what the marker says.
    MarkMigrating(Duration),
}

/// The start-up decision shared by every store: `choice` is the user's,
/// `marker` the layout the store's marker records (if any), `holds_keys`
/// whether the store holds idempotency keys. `store` names the store in
/// errors.
pub fn decide(
    choice: KeyLayout,
    marker: Option<Layout>,
    holds_keys: bool,
    store: &str,
) -> Result<LayoutAction, LayoutError> {
    match (choice, marker) {
        (KeyLayout::Legacy, Some(found)) => Err(LayoutError::Marked {
            store: store.to_owned(),
            found,
        }),
        (KeyLayout::Legacy, None) => Ok(LayoutAction::Use(Layout::Legacy)),
        (_, Some(found)) => Ok(LayoutAction::Use(found)),
        (KeyLayout::Keyspaced, None) if holds_keys => Err(LayoutError::Unmarked {
            store: store.to_owned(),
        }),
        (KeyLayout::Keyspaced, None) => Ok(LayoutAction::MarkKeyspaced),
        (KeyLayout::Migrate { window }, None) if holds_keys => {
            Ok(LayoutAction::MarkMigrating(window))
        }
        // Nothing to migrate: an empty store starts in the new layout.
        (KeyLayout::Migrate { .. }, None) => Ok(LayoutAction::MarkKeyspaced),
    }
}

/// A store's key layout does not fit the worker's choice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The store holds keys of the first release's global layout and no marker.
    #[error(
        "{store} holds idempotency keys of the global layout of an earlier release and no layout marker: \
         choose KeyLayout::Migrate {{ window }} to upgrade (both layouts are read for the window; make it longer than the rolling deploy and the store's TTL), \
         or KeyLayout::Legacy to keep the global layout"
    )]
    Unmarked {
        /// The store.
        store: String,
    },
    /// The worker chose the legacy layout on a store already marked.
    #[error(
        "{store} is marked for per-consumer keyspaces ({found:?}): a worker of the legacy layout would not see their keys; \
         choose KeyLayout::Keyspaced, or delete the marker to go back to the global layout"
    )]
    Marked {
        /// The store.
        store: String,
        /// The layout its marker records.
        found: Layout,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn an_unmarked_store_with_keys_is_refused_unless_the_user_chose() {
        assert!(matches!(
            decide(KeyLayout::Keyspaced, None, true, "s"),
            Err(LayoutError::Unmarked { .. })
        ));
        assert_eq!(
            decide(KeyLayout::Legacy, None, true, "s"),
            Ok(LayoutAction::Use(Layout::Legacy))
        );
        assert_eq!(
            decide(KeyLayout::Migrate { window: W }, None, true, "s"),
            Ok(LayoutAction::MarkMigrating(W))
        );
    }

    #[test]
    fn an_empty_store_is_marked_and_a_marker_wins() {
        for choice in [KeyLayout::Keyspaced, KeyLayout::Migrate { window: W }] {
            assert_eq!(
                decide(choice, None, false, "s"),
                Ok(LayoutAction::MarkKeyspaced)
            );
            let until = SystemTime::now() + W;
            let found = Layout::Migrating { until };
            assert_eq!(
                decide(choice, Some(found), true, "s"),
                Ok(LayoutAction::Use(found)),
                "a worker started later joins the running migration"
            );
        }
        assert!(matches!(
            decide(KeyLayout::Legacy, Some(Layout::Keyspaced), false, "s"),
            Err(LayoutError::Marked { .. })
        ));
    }

    #[test]
    fn legacy_keys_are_read_only_inside_the_window() {
        let now = SystemTime::now();
        let migrating = Layout::Migrating { until: now + W };
        assert!(migrating.reads_legacy(now));
        assert!(!migrating.reads_legacy(now + W));
        assert!(!Layout::Keyspaced.reads_legacy(now));
        assert!(!Layout::Legacy.keyspaced());
    }
}
