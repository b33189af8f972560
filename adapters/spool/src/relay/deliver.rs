//! One round's sending: the records of a batch grouped by unit, and each
//! unit's records sent in order.

use std::collections::{HashMap, HashSet};

use super::{RecordLog, Target};
use crate::metrics;
use crate::outlet::{Failure, Outlet, attempt};
use crate::record::{SpooledRecord, Unit};

/// `records` grouped by unit, in log order, leaving out the units in `blocked`.
pub(super) fn group_by_unit(
    records: Vec<SpooledRecord>,
    blocked: &HashSet<Unit>,
) -> Vec<(Unit, Vec<SpooledRecord>)> {
    let mut units: Vec<(Unit, Vec<SpooledRecord>)> = Vec::new();
    let mut index: HashMap<Unit, usize> = HashMap::new();
    for record in records {
        let unit = record.unit();
        if blocked.contains(&unit) {
            continue;
        }
        match index.get(&unit) {
            Some(&i) => units[i].1.push(record),
            None => {
                index.insert(unit.clone(), units.len());
                units.push((unit, vec![record]));
            }
        }
    }
    units
}

/// What became of one unit's records in a round.
pub(super) struct UnitResult<E> {
    pub(super) unit: Unit,
    /// The `seq`s the broker confirmed.
    pub(super) confirmed: Vec<u64>,
    /// The record that failed, and why: the unit waits behind it.
    pub(super) failed: Option<(SpooledRecord, Failure<E>)>,
}

/// Sends one unit's records in order, each after the previous one was
/// confirmed or set aside, until one fails or the log is no longer owned.
pub(super) async fn deliver<T: Target, L: RecordLog>(
    log: &L,
    target: &T,
    unit: Unit,
    records: Vec<SpooledRecord>,
) -> UnitResult<<T::Outlet as Outlet>::Error> {
    let mut confirmed = Vec::with_capacity(records.len());
    for record in records {
        if !log.still_owned().await {
            // Not ours any more: the rest stays for the log's new owner.
            break;
        }
        let failure = match attempt(
            target.outlet(),
            record.destination.as_deref(),
            &record.message,
            target.attempt_timeout(),
        )
        .await
        {
            Ok(()) => {
                confirmed.push(record.seq);
                continue;
            }
            Err(failure) => failure,
        };
        // Refused for good: out of the key's way, into the refused records.
        if failure.for_good::<T::Outlet>()
            && set_aside::<T::Outlet, L>(log, &record, &failure).await
        {
            continue;
        }
        return UnitResult {
            unit,
            confirmed,
            failed: Some((record, failure)),
        };
    }
    UnitResult {
        unit,
        confirmed,
        failed: None,
    }
}

/// Moves a record the broker refused for good to the refused records; false
/// if the spool could not (the record then waits, as any failure).
async fn set_aside<O: Outlet, L: RecordLog>(
    log: &L,
    record: &SpooledRecord,
    failure: &Failure<O::Error>,
) -> bool {
    let name = log.name();
    let reason = failure.reason::<O>();
    let destination = record.destination.as_deref().unwrap_or("<default>");
    match log
        .set_aside(record.seq, reason, &failure.to_string())
        .await
    {
        Ok(_) => {
            metrics::relay_failure(name, reason);
            metrics::refused(name, reason);
            tracing::error!(
                spool = %name, message_id = %record.message.meta.message_id, destination,
                seq = record.seq, reason, error = %failure,
                "the broker refuses a spooled message for good; it is moved to the refused \
                 records (backstop spool refused) and its key goes on"
            );
            true
        }
        Err(error) => {
            tracing::error!(
                spool = %name, message_id = %record.message.meta.message_id, destination,
                seq = record.seq, reason, %error,
                "a refused message could not be moved aside; its key waits behind it"
            );
            false
        }
    }
}
