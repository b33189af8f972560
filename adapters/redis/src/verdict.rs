//! A claim script's answer read back as a [`Claim`].

use std::time::Duration;

use backstop::ErrorKind;
use backstop::error::{Failure, StoreError};
use backstop::idempotency::{Claim, Fence};

use crate::RedisStoreError;

/// A claim script's answer, `{verdict, n, fence, crashed}` and a pending
/// letter's kind, error text, attempts, first and last failure (ms).
pub(crate) type Verdict = (
    String,
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
);

/// The failure of a pending letter (kind, error text, attempts, first and
/// last failure in ms); an unknown kind (written by a newer release) reads
/// as `permanent`.
fn letter_of(kind: &str, message: String, attempts: &str, first: &str, last: &str) -> Failure {
    let at = |ms: &str| std::time::UNIX_EPOCH + Duration::from_millis(ms.parse().unwrap_or(0));
    Failure {
        kind: ErrorKind::parse(kind).unwrap_or(ErrorKind::Permanent),
        message,
        attempts: attempts.parse().unwrap_or(0),
        first_failure: at(first),
        last_failure: at(last),
    }
}

/// The claim a claim script's answer reports (`op` names the call in errors).
pub(crate) fn claim_of(
    op: &'static str,
    (verdict, n, fence, crashed, kind, message, attempts, first, last): Verdict,
) -> Result<Claim, StoreError> {
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    let fence = || {
        fence.parse::<u64>().map(Fence).map_err(|_| {
            StoreError::from(RedisStoreError::UnexpectedReply {
                op,
                reply: format!("fence {fence:?}"),
            })
        })
    };
    match verdict.as_str() {
        "acquired" => Ok(Claim::Acquired {
            fence: fence()?,
            failed_runs: count(n),
            crashed: crashed == 1,
        }),
        "letter_pending" => Ok(Claim::LetterPending {
            fence: fence()?,
            failed_runs: count(n),
            letter: letter_of(&kind, message, &attempts, &first, &last),
        }),
        "busy" => Ok(Claim::Busy {
            remaining: Duration::from_millis(u64::try_from(n.max(0)).unwrap_or(0)),
        }),
        "completed" => Ok(Claim::Completed),
        "dead_lettered" => Ok(Claim::DeadLettered),
        _ => Err(RedisStoreError::UnexpectedReply {
            op,
            reply: format!("{verdict} {n}"),
        }
        .into()),
    }
}
