//! `#[derive(Handler)]`: a payload type or routes, a consistent retry
//! policy, a timeout above zero.

use std::collections::HashSet;
use std::time::Duration;

use syn::{DeriveInput, Type};

use crate::attr::handler::{HandlerAttrs, Idempotency, Routes};
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
    /// `routes(...)`: each message type and its payload type; the stack's
    /// payload is then `Routed`.
    pub(crate) routes: Option<Vec<(String, Type)>>,
    pub(crate) type_from: Option<syn::ExprPath>,
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
    if !attrs.payload_given && !attrs.routes_given {
        const EXAMPLE: &str = "#[handler(payload = OrderPlaced)]";
        const ROUTES: &str =
            "or route by message type with `routes(\"order.placed\" = OrderPlaced, ...)`";
        match &attrs.attr {
            Some(attr) => errors.spanned(
                attr,
                format!("missing `payload = ...`: say which payload type this handler takes, e.g. `{EXAMPLE}`, {ROUTES}"),
            ),
            None => errors.spanned(
                &input.ident,
                format!("missing `#[handler(...)]`: say which payload type this handler takes, e.g. `{EXAMPLE}`, {ROUTES}"),
            ),
        }
    }
    let routes = attrs
        .routes
        .as_ref()
        .map(|routes| validate_routes(&attrs, routes, errors));
    if let (Some((key, _)), None) = (&attrs.type_from, &attrs.routes) {
        errors.spanned(
            key,
            "`type_from` reads the message type for `routes(...)`: add the routes, or remove `type_from`",
        );
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
    let payload = match routes {
        Some(_) => Some(syn::parse_quote!(::backstop::__private::Routed)),
        None => attrs.payload,
    };
    Handler {
        payload,
        routes,
        type_from: attrs.type_from.map(|(_, function)| function),
        retry,
        timeout,
        idempotency: attrs.idempotency.map_or(Idempotency::None, |(i, _)| i),
        concurrency: attrs.concurrency.map_or(1, |(n, _)| n),
        dlq: attrs.dlq.map(|s| s.value()),
        source: attrs.source.map(|s| s.value()),
    }
}

/// Checks `routes(...)`: alone (no `payload`), each type once and named, and
/// an idempotency key the router can have.
fn validate_routes(
    attrs: &HandlerAttrs,
    routes: &Routes,
    errors: &mut Errors,
) -> Vec<(String, Type)> {
    if attrs.payload_given {
        errors.spanned(
            &routes.path,
            "`payload` and `routes` cannot be given together: a routed handler takes each route's own payload type; remove `payload`, or remove `routes` to take one payload type",
        );
    }
    if let Some((Idempotency::Key | Idempotency::KeyOrMessageId, literal)) = &attrs.idempotency {
        errors.spanned(
            literal,
            "a routed handler has no payload key (the key is taken before the message is routed and decoded): write `idempotency = \"message_id\"`",
        );
    }
    let mut seen = HashSet::new();
    for route in &routes.routes {
        let name = route.name.value();
        if name.is_empty() {
            errors.spanned(
                &route.name,
                "a route's message type cannot be empty: write `\"order.placed\" = OrderPlaced`",
            );
        } else if !seen.insert(name.clone()) {
            errors.spanned(
                &route.name,
                format!("message type {name:?} is routed twice: give each type one route"),
            );
        }
    }
    routes
        .routes
        .iter()
        .map(|route| (route.name.value(), route.payload.clone()))
        .collect()
}
