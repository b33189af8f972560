//! `#[handler(payload = T, retries = 5, backoff(...), timeout = "30s", ...)]`,
//! or `#[handler(routes("order.placed" = OrderPlaced, ...), ...)]`.

use syn::{Attribute, DeriveInput, LitInt, LitStr, Path, Type};

use super::{duration, each_meta, int, name, set_once, unknown_key, value};
use crate::duration::SpannedDuration;
use crate::errors::Errors;

pub(crate) const KEYS: &[&str] = &[
    "payload",
    "retries",
    "backoff",
    "timeout",
    "idempotency",
    "concurrency",
    "dlq",
    "source",
    "routes",
    "type_from",
];
const BACKOFF_KEYS: &[&str] = &["initial", "max"];
pub(crate) const IDEMPOTENCY: &[&str] = &["key", "message_id", "key_or_message_id", "none"];

/// Where idempotency keys come from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// `"key"`: `KeySource::Payload`.
    Key,
    /// `"message_id"`: `KeySource::MessageId`.
    MessageId,
    /// `"key_or_message_id"`: `KeySource::PayloadOrMessageId`.
    KeyOrMessageId,
    /// `"none"`: no idempotency layer.
    None,
}

/// `"order.placed" = OrderPlaced` in `routes(...)`.
pub(crate) struct RouteAttr {
    pub(crate) name: LitStr,
    pub(crate) payload: Type,
}

/// `routes(...)`: the key, for errors about the whole list, and each route.
pub(crate) struct Routes {
    pub(crate) path: Path,
    pub(crate) routes: Vec<RouteAttr>,
}

/// `backoff(initial = "...", max = "...")`.
pub(crate) struct Backoff {
    /// The `backoff` key, for errors about the pair.
    pub(crate) path: Path,
    pub(crate) initial: Option<SpannedDuration>,
    pub(crate) max: Option<SpannedDuration>,
}

/// What the `#[handler]` attributes of a type say.
#[derive(Default)]
pub(crate) struct HandlerAttrs {
    /// The first `#[handler]` attribute, for errors about what it lacks.
    pub(crate) attr: Option<Attribute>,
    pub(crate) payload: Option<Type>,
    /// `payload = ...` was written, even if its value was not a type.
    pub(crate) payload_given: bool,
    pub(crate) retries: Option<(u32, LitInt)>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) timeout: Option<SpannedDuration>,
    pub(crate) idempotency: Option<(Idempotency, LitStr)>,
    pub(crate) concurrency: Option<(usize, LitInt)>,
    pub(crate) dlq: Option<LitStr>,
    pub(crate) source: Option<LitStr>,
    pub(crate) routes: Option<Routes>,
    /// `routes` was written, even if its routes could not be read.
    pub(crate) routes_given: bool,
    /// `type_from = path::to::function`, with the key for errors.
    pub(crate) type_from: Option<(Path, syn::ExprPath)>,
}

/// Reads the `#[handler]` attributes of `input`.
pub(crate) fn parse(input: &DeriveInput, errors: &mut Errors) -> HandlerAttrs {
    let mut attrs = HandlerAttrs {
        attr: input
            .attrs
            .iter()
            .find(|a| a.path().is_ident("handler"))
            .cloned(),
        ..HandlerAttrs::default()
    };
    each_meta(&input.attrs, "handler", KEYS, errors, |meta, errors| {
        let path = meta.path.clone();
        if path.is_ident("payload") {
            let input = value(&meta, "payload = OrderPlaced")?;
            if input.peek(LitStr) {
                let literal: LitStr = input.parse()?;
                attrs.payload_given = true;
                return Err(syn::Error::new_spanned(
                    &literal,
                    format!(
                        "`payload` is a type, not a string: write `payload = {}`",
                        literal.value()
                    ),
                ));
            }
            attrs.payload_given = true;
            let ty: Type = input.parse()?;
            set_once(&mut attrs.payload, ty, &path, errors);
        } else if path.is_ident("retries") {
            let retries = int::<u32>(&meta, "retries = 5", "0 to 4294967295")?;
            set_once(&mut attrs.retries, retries, &path, errors);
        } else if path.is_ident("backoff") {
            let backoff = backoff(&meta, errors)?;
            set_once(&mut attrs.backoff, backoff, &path, errors);
        } else if path.is_ident("timeout") {
            let timeout = duration(&meta, "timeout = \"30s\"")?;
            set_once(&mut attrs.timeout, timeout, &path, errors);
        } else if path.is_ident("idempotency") {
            let literal = super::lit_str(&meta, "idempotency = \"key\"")?;
            let source = match literal.value().as_str() {
                "key" => Idempotency::Key,
                "message_id" => Idempotency::MessageId,
                "key_or_message_id" => Idempotency::KeyOrMessageId,
                "none" => Idempotency::None,
                other => {
                    let known: Vec<String> =
                        IDEMPOTENCY.iter().map(|k| format!("\"{k}\"")).collect();
                    return Err(syn::Error::new_spanned(
                        &literal,
                        format!(
                            "unknown idempotency `{other}`: expected one of {}",
                            known.join(", ")
                        ),
                    ));
                }
            };
            set_once(&mut attrs.idempotency, (source, literal), &path, errors);
        } else if path.is_ident("concurrency") {
            let concurrency = int::<usize>(&meta, "concurrency = 32", "1 up")?;
            if concurrency.0 == 0 {
                return Err(syn::Error::new_spanned(
                    &concurrency.1,
                    "`concurrency` must be at least 1: write `concurrency = 1` to run one message at a time",
                ));
            }
            set_once(&mut attrs.concurrency, concurrency, &path, errors);
        } else if path.is_ident("dlq") {
            let dlq = name(&meta, "dlq = \"orders.dlq\"")?;
            set_once(&mut attrs.dlq, dlq, &path, errors);
        } else if path.is_ident("source") {
            let source = name(&meta, "source = \"orders\"")?;
            set_once(&mut attrs.source, source, &path, errors);
        } else if path.is_ident("routes") {
            attrs.routes_given = true;
            let routes = routes(&meta)?;
            set_once(&mut attrs.routes, routes, &path, errors);
        } else if path.is_ident("type_from") {
            const EXAMPLE: &str = "type_from = event_type";
            let input = value(&meta, EXAMPLE)?;
            if input.peek(LitStr) {
                let literal: LitStr = input.parse()?;
                return Err(syn::Error::new_spanned(
                    &literal,
                    format!(
                        "`type_from` is a function, not a string: write `type_from = {}`",
                        literal.value()
                    ),
                ));
            }
            let function: syn::ExprPath = input.parse()?;
            set_once(
                &mut attrs.type_from,
                (path.clone(), function),
                &path,
                errors,
            );
        } else {
            return Err(unknown_key(&path, "`#[handler(...)]`", KEYS));
        }
        Ok(())
    });
    attrs
}

/// `routes("order.placed" = OrderPlaced, "order.cancelled" = OrderCancelled)`.
fn routes(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Routes> {
    const EXAMPLE: &str =
        "routes(\"order.placed\" = OrderPlaced, \"order.cancelled\" = OrderCancelled)";
    if !meta.input.peek(syn::token::Paren) {
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("`routes` takes its routes in parentheses: write `{EXAMPLE}`"),
        ));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    if content.is_empty() {
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!(
                "empty `routes()`: route each message type to its payload type, e.g. `{EXAMPLE}`"
            ),
        ));
    }
    let routes = route_list(&content, EXAMPLE);
    if routes.is_err() {
        // Leave nothing unread inside the parentheses: syn would report it too.
        content.parse::<proc_macro2::TokenStream>()?;
    }
    let routes = routes?;
    Ok(Routes {
        path: meta.path.clone(),
        routes,
    })
}

/// The `"type" = Payload` pairs inside `routes(...)`.
fn route_list(content: syn::parse::ParseStream<'_>, example: &str) -> syn::Result<Vec<RouteAttr>> {
    let mut routes = Vec::new();
    while !content.is_empty() {
        if !content.peek(LitStr) {
            return Err(content.error(format!(
                "a route is the message type as a string and its payload type: write `{example}`"
            )));
        }
        let name: LitStr = content.parse()?;
        if !content.peek(syn::Token![=]) {
            return Err(syn::Error::new_spanned(
                &name,
                format!(
                    "expected the payload type of {:?}: write `{:?} = OrderPlaced`",
                    name.value(),
                    name.value()
                ),
            ));
        }
        content.parse::<syn::Token![=]>()?;
        let payload: Type = content.parse()?;
        routes.push(RouteAttr { name, payload });
        if !content.is_empty() {
            content.parse::<syn::Token![,]>()?;
        }
    }
    Ok(routes)
}

/// `backoff(initial = "100ms", max = "10s")`.
fn backoff(meta: &syn::meta::ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Backoff> {
    const EXAMPLE: &str = "backoff(initial = \"100ms\", max = \"10s\")";
    if !meta.input.peek(syn::token::Paren) {
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("`backoff` takes its bounds in parentheses: write `{EXAMPLE}`"),
        ));
    }
    let mut backoff = Backoff {
        path: meta.path.clone(),
        initial: None,
        max: None,
    };
    let empty = meta
        .input
        .cursor()
        .group(proc_macro2::Delimiter::Parenthesis)
        .is_some_and(|(inside, _, _)| inside.eof());
    if empty {
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("empty `backoff()`: write `{EXAMPLE}` (either bound may be left out)"),
        ));
    }
    meta.parse_nested_meta(|inner| {
        let bound = if inner.path.is_ident("initial") {
            duration(&inner, "initial = \"100ms\"")
                .map(|d| set_once(&mut backoff.initial, d, &inner.path, errors))
        } else if inner.path.is_ident("max") {
            duration(&inner, "max = \"10s\"")
                .map(|d| set_once(&mut backoff.max, d, &inner.path, errors))
        } else {
            Err(unknown_key(&inner.path, "`backoff(...)`", BACKOFF_KEYS))
        };
        // Read the other bound after a mistake in one, as `each_meta` does for keys.
        if let Err(error) = bound {
            errors.push(error);
            super::skip_value(inner.input)?;
        }
        Ok(())
    })?;
    Ok(backoff)
}
