//! `#[derive(Handler)]`: a payload type, a consistent retry policy, a timeout above zero.

use std::time::Duration;

use syn::{DeriveInput, Type};

use crate::attr::handler::{HandlerAttrs, Idempotency};
use crate::errors::Errors;

/// The stack a handler asks for, ready to generate.
pub(crate) struct Handler {
    /// `None` only after an error (the fallback does without it).
    pub(crate) payload: Option<Type>,
    /// `Some` when the policy differs from `RetryPolicy::default()`.
    pub(crate) retry: Option<Retry>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotency: Idempotency,
    pub(crate) concurrency: usize,
    pub(crate) dlq: Option<String>,
    pub(crate) source: Option<String>,
}

/// `retries` and `backoff`.
pub(crate) struct Retry {
    pub(crate) retries: Option<u32>,
    pub(crate) backoff: Option<(Duration, Duration)>,
}

/// `RetryPolicy::default()`'s bounds, for a `backoff` that gives one.
const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
const DEFAULT_MAX: Duration = Duration::from_secs(10);

/// Checks `attrs` against `input`.
pub(crate) fn validate(input: &DeriveInput, attrs: HandlerAttrs, errors: &mut Errors) -> Handler {
    if !attrs.payload_given {
        const EXAMPLE: &str = "#[handler(payload = OrderPlaced)]";
        match &attrs.attr {
            Some(attr) => errors.spanned(
                attr,
                format!("missing `payload = ...`: say which payload type this handler takes, e.g. `{EXAMPLE}`"),
            ),
            None => errors.spanned(
                &input.ident,
                format!("missing `#[handler(...)]`: say which payload type this handler takes, e.g. `{EXAMPLE}`"),
            ),
        }
    }
    let backoff = attrs.backoff.and_then(|backoff| {
        let initial = backoff.initial.as_ref().map_or(DEFAULT_INITIAL, |d| d.value);
        let max = backoff.max.as_ref().map_or(DEFAULT_MAX, |d| d.value);
        if max < initial {
            let at = backoff.max.as_ref().map(|d| &d.literal).or(backoff.initial.as_ref().map(|d| &d.literal));
            let what = if backoff.max.is_some() { "`max`" } else { "the default `max` (10s)" };
            let message = format!(
                "{what} is shorter than `initial`: the backoff grows from `initial` up to `max`, so write a `max` of at least {}",
                humantime::format_duration(initial)
            );
            match at {
                Some(literal) => errors.spanned(literal, message),
                None => errors.spanned(&backoff.path, message),
            }
            return None;
        }
        (backoff.initial.is_some() || backoff.max.is_some()).then_some((initial, max))
    });
    let retries = attrs.retries.map(|(n, _)| n);
    let retry = (retries.is_some() || backoff.is_some()).then_some(Retry { retries, backoff });
    let timeout = attrs.timeout.and_then(|timeout| {
        if timeout.value.is_zero() {
            errors.spanned(
                &timeout.literal,
                "`timeout` must be longer than zero: leave it out for no timeout",
            );
            return None;
        }
        Some(timeout.value)
    });
    Handler {
        payload: attrs.payload,
        retry,
        timeout,
        idempotency: attrs.idempotency.map_or(Idempotency::None, |(i, _)| i),
        concurrency: attrs.concurrency.map_or(1, |(n, _)| n),
        dlq: attrs.dlq.map(|s| s.value()),
        source: attrs.source.map(|s| s.value()),
    }
}
