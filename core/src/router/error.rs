//! The router's errors: [`UnknownType`] per message, [`RouterError`] when building.

use std::sync::Arc;

/// The most characters of a message's type an error repeats.
const MAX_TYPE_CHARS: usize = 128;

/// A message whose type has no route, or that has no type: the source of
/// the permanent `unknown_type` failure the router returns, so the stack
/// dead-letters it without running any handler and never retries it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}; known types: {known}", describe(.seen.as_deref(), .untyped))]
pub struct UnknownType {
    seen: Option<String>,
    /// What to say when there is no type: where the router looked.
    untyped: &'static str,
    known: Arc<str>,
}

impl UnknownType {
    pub(crate) fn new(seen: Option<&str>, untyped: &'static str, known: Arc<str>) -> Self {
        UnknownType {
            seen: seen.map(|t| cut(t, MAX_TYPE_CHARS)),
            untyped,
            known,
        }
    }

    /// The type the message carried (cut to 128 characters), or `None`
    /// when it carried none.
    pub fn seen(&self) -> Option<&str> {
        self.seen.as_deref()
    }
}

fn describe(seen: Option<&str>, untyped: &'static str) -> std::borrow::Cow<'static, str> {
    match seen {
        Some(seen) => format!("no route for message type {seen:?}").into(),
        None => untyped.into(),
    }
}

/// `text` cut to at most `max` characters, with `…` when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A router that cannot be built as configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Two routes for one type name: each type goes to one handler.
    #[error("message type {name:?} is routed twice: give each type one route")]
    DuplicateRoute {
        /// The type name given twice.
        name: String,
    },
    /// A route for the empty type name, which no message can carry (an
    /// empty type counts as none).
    #[error("a route has an empty message type: name the type it handles")]
    EmptyName,
    /// No routes: every message would be dead-lettered as `unknown_type`.
    #[error("the router has no routes: add one with `route::<Payload, _>(\"type\", handler)`")]
    NoRoutes,
}
