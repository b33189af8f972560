//! The spool's metrics, through the `metrics` facade, each labelled with the
//! spool's name (`spool`):
//!
//! | Name | Kind | Meaning |
//! |---|---|---|
//! | `backstop_spool_depth` | gauge | records waiting in the spool |
//! | `backstop_spool_bytes` | gauge | bytes waiting in the spool |
//! | `backstop_spool_spooled_total` | counter | messages written to the spool |
//! | `backstop_spool_relayed_total` | counter | spooled messages the broker confirmed (and the spool dropped) |
//! | `backstop_spool_relay_failures_total` | counter | failed relay sends, labelled `reason` |
//! | `backstop_spool_refused_total` | counter | spooled messages the broker refused for good (or unreadable rows), moved to the refused records, labelled `reason` |

use std::sync::Once;

/// Records waiting in the spool (gauge).
pub const DEPTH: &str = "backstop_spool_depth";
/// Bytes waiting in the spool (gauge).
pub const BYTES: &str = "backstop_spool_bytes";
/// Messages written to the spool (counter).
pub const SPOOLED: &str = "backstop_spool_spooled_total";
/// Spooled messages the broker confirmed (counter).
pub const RELAYED: &str = "backstop_spool_relayed_total";
/// Failed relay sends, by `reason` (counter).
pub const RELAY_FAILURES: &str = "backstop_spool_relay_failures_total";

/// Spooled messages moved to the refused records, by `reason` (counter).
pub const REFUSED: &str = "backstop_spool_refused_total";

/// Describes the metrics once per process.
pub(crate) fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_gauge!(DEPTH, "Records waiting in the publisher spool.");
        metrics::describe_gauge!(
            BYTES,
            metrics::Unit::Bytes,
            "Bytes of records waiting in the publisher spool."
        );
        metrics::describe_counter!(SPOOLED, "Messages written to the publisher spool.");
        metrics::describe_counter!(
            RELAYED,
            "Spooled messages the broker confirmed, removed from the spool."
        );
        metrics::describe_counter!(
            RELAY_FAILURES,
            "Relay sends of spooled messages that failed, by reason."
        );
        metrics::describe_counter!(
            REFUSED,
            "Spooled messages the broker refused for good, moved to the refused records, by reason."
        );
    });
}

pub(crate) fn depth(spool: &str, records: u64, bytes: u64) {
    // Precision loss above 2^53 records is irrelevant for a gauge.
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(DEPTH, "spool" => spool.to_owned()).set(records as f64);
        metrics::gauge!(BYTES, "spool" => spool.to_owned()).set(bytes as f64);
    }
}

pub(crate) fn spooled(spool: &str, n: u64) {
    metrics::counter!(SPOOLED, "spool" => spool.to_owned()).increment(n);
}

pub(crate) fn relayed(spool: &str, n: u64) {
    metrics::counter!(RELAYED, "spool" => spool.to_owned()).increment(n);
}

pub(crate) fn relay_failure(spool: &str, reason: &'static str) {
    metrics::counter!(RELAY_FAILURES, "spool" => spool.to_owned(), "reason" => reason).increment(1);
}

pub(crate) fn refused(spool: &str, reason: &str) {
    metrics::counter!(REFUSED, "spool" => spool.to_owned(), "reason" => reason.to_owned())
        .increment(1);
}
