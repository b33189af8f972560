//! One batch through the handler ([`run`]): one result per message,
//! whatever the handler does (a panic, the wrong number of results).

use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

use super::HandleBatch;
use crate::context::Context;
use crate::error::{ErrorKind, HandlerError};

/// Runs `items` through the handler: one result per item, whatever the
/// handler does (a panic, the wrong number of results).
pub(super) async fn run<T, H: HandleBatch<T>>(
    handler: &H,
    items: Vec<(T, Context)>,
) -> Vec<Result<(), HandlerError>> {
    let n = items.len();
    // The call inside the catch too: a handler may panic before its future.
    let results = AssertUnwindSafe(async { handler.handle_batch(items).await })
        .catch_unwind()
        .await;
    // Why the batch failed as a whole, the kind its members are retried
    // with, and the failure of a batch of one (the message's own).
    let (why, retried_as, alone) = match results {
        Ok(results) if results.len() == n => {
            return results.into_iter().map(|r| r.map_err(Into::into)).collect();
        }
        Ok(results) => {
            let why = format!(
                "the batch handler returned {} results for {n} messages",
                results.len()
            );
            let alone = HandlerError::permanent(why.clone());
            (why, ErrorKind::Exhausted, alone)
        }
        Err(panic) => {
            let why = format!(
                "the batch handler panicked: {}",
                crate::catch_panic::panic_text(&*panic)
            );
            // Permanent, kind `panic`: as a panicking handler's.
            (
                why,
                ErrorKind::Panic,
                crate::catch_panic::panic_error(panic),
            )
        }
    };
    if n == 1 {
        tracing::error!("{why}");
        return vec![Err(alone)];
    }
    tracing::error!("{why}; each message of the batch is retried alone");
    (0..n)
        .map(|_| Err(batch_failed(why.clone(), retried_as)))
        .collect()
}

/// A failure of the whole batch, retried per message (`kind` if the
/// attempts run out).
pub(super) fn batch_failed(why: String, kind: ErrorKind) -> HandlerError {
    HandlerError::Transient {
        source: why.into(),
        retry_after: None,
        kind,
    }
}
