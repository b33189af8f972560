//! A claim read back from the store's rows: won, lost (and why), or one
//! item of a batch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::ErrorKind;
use backstop::error::Failure;
use backstop::idempotency::{Claim, Fence};

use crate::PostgresError;

/// The claim a won claim's row (`claim`'s `RETURNING`, from column 0) took.
pub(super) fn won_claim(
    op: &'static str,
    row: &tokio_postgres::Row,
) -> Result<Claim, PostgresError> {
    let read = |source| PostgresError::Query { op, source };
    let failed: i32 = row.try_get(0).map_err(read)?;
    let fence: i64 = row.try_get(1).map_err(read)?;
    let crashed: bool = row.try_get(2).map_err(read)?;
    let kind: Option<String> = row.try_get(3).map_err(read)?;
    let failed_runs = u32::try_from(failed).unwrap_or(0);
    let fence = Fence(fence.unsigned_abs());
    let Some(kind) = kind else {
        return Ok(Claim::Acquired {
            fence,
            failed_runs,
            crashed,
        });
    };
    let error: Option<String> = row.try_get(4).map_err(read)?;
    let attempts: Option<i32> = row.try_get(5).map_err(read)?;
    let first: Option<SystemTime> = row.try_get(6).map_err(read)?;
    let last: Option<SystemTime> = row.try_get(7).map_err(read)?;
    Ok(Claim::LetterPending {
        fence,
        failed_runs,
        letter: Failure {
            // A kind of a newer release reads as `permanent`.
            kind: ErrorKind::parse(&kind).unwrap_or(ErrorKind::Permanent),
            message: error.unwrap_or_default(),
            attempts: attempts.map_or(0, |n| u32::try_from(n).unwrap_or(0)),
            first_failure: first.unwrap_or(UNIX_EPOCH),
            last_failure: last.unwrap_or(UNIX_EPOCH),
        },
    })
}

/// Why a claim of `replay` did not win, from the row as it was (`inspect`'s
/// columns, from column `at`: state, replay, expired, remaining ms); `None`
/// if nothing there stops a claim (the row changed meanwhile, or is absent).
pub(super) fn lost_claim(
    op: &'static str,
    row: &tokio_postgres::Row,
    at: usize,
    replay: u32,
) -> Result<Option<Claim>, PostgresError> {
    let read = |source| PostgresError::Query { op, source };
    let Some(state) = row.try_get::<_, Option<&str>>(at).map_err(read)? else {
        return Ok(None);
    };
    let seen: i32 = row.try_get(at + 1).map_err(read)?;
    let expired: bool = row.try_get(at + 2).map_err(read)?;
    let remaining: Option<i64> = row.try_get(at + 3).map_err(read)?;
    let next = i64::from(replay) == i64::from(seen) + 1;
    Ok(match state {
        "completed" if !expired => Some(Claim::Completed),
        "dead_lettered" if !expired && !next => Some(Claim::DeadLettered),
        "in_progress" => match remaining {
            Some(ms) if ms > 0 => Some(Claim::Busy {
                remaining: Duration::from_millis(ms.unsigned_abs()),
            }),
            _ => None,
        },
        _ => None,
    })
}

/// One item of `claim_many` (its row: the claim's columns 0–7, won, taken,
/// then the row as it was); `None` if the row changed under the statement.
pub(super) fn batch_claim(
    row: &tokio_postgres::Row,
    lease: Duration,
    replay: u32,
) -> Result<Option<Claim>, PostgresError> {
    let read = |source| PostgresError::Query {
        op: "claim_many",
        source,
    };
    if row.try_get::<_, bool>(8).map_err(read)? {
        return won_claim("claim_many", row).map(Some);
    }
    if row.try_get::<_, bool>(9).map_err(read)? {
        // Another item of this batch took the key just now.
        return Ok(Some(Claim::Busy { remaining: lease }));
    }
    Ok(lost_claim("claim_many", row, 10, replay)?.map(|c| at_most(c, lease)))
}

/// A busy answer never says more than the lease asked for: the holder's
/// expiry is its statement's `now()` plus the lease, and a statement that
/// started a moment earlier reads it a moment longer away.
pub(super) fn at_most(claim: Claim, lease: Duration) -> Claim {
    match claim {
        Claim::Busy { remaining } => Claim::Busy {
            remaining: remaining.min(lease),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_answer_says_at_most_the_lease() {
        let lease = Duration::from_secs(60);
        let read = Claim::Busy {
            remaining: Duration::from_millis(60_001),
        };
        assert!(matches!(at_most(read, lease), Claim::Busy { remaining } if remaining == lease));
        let short = Claim::Busy {
            remaining: Duration::from_secs(3),
        };
        assert!(
            matches!(at_most(short, lease), Claim::Busy { remaining } if remaining == Duration::from_secs(3))
        );
        assert!(matches!(at_most(Claim::Completed, lease), Claim::Completed));
    }
}
