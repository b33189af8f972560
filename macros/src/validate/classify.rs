//! `#[derive(Classify)]`: every variant transient or permanent, `retry_after` only when transient.

use std::time::Duration;

use syn::{Data, DeriveInput, Ident};

use crate::attr::classify::{ClassAttrs, ClassifyAttrs};
use crate::errors::Errors;

/// A verdict for one variant (or the whole struct).
#[derive(Clone, Copy)]
pub(crate) enum Class {
    /// Retried, no sooner than `retry_after` if given.
    Transient { retry_after: Option<Duration> },
    /// Dead-lettered now.
    Permanent,
}

/// An error type's classification, ready to generate.
pub(crate) enum Classify {
    /// A struct: one verdict.
    Struct(Class),
    /// An enum: one verdict per variant, in order.
    Enum(Vec<(Ident, Class)>),
}

const HOW: &str =
    "add `#[classify(transient)]` (retried) or `#[classify(permanent)]` (dead-lettered now)";

/// Checks `attrs` against `input`; `None` after an error.
pub(crate) fn validate(
    input: &DeriveInput,
    attrs: ClassifyAttrs,
    errors: &mut Errors,
) -> Option<Classify> {
    let default = attrs.default.and_then(|d| class(d, errors));
    match &input.data {
        Data::Union(data) => {
            errors.spanned(
                data.union_token,
                "`Classify` cannot be derived for a union: use an enum or a struct",
            );
            None
        }
        Data::Struct(_) => match default {
            Some(class) => Some(Classify::Struct(class)),
            None => {
                errors.spanned(
                    &input.ident,
                    format!(
                        "`{}` has no classification: {HOW} to the struct",
                        input.ident
                    ),
                );
                None
            }
        },
        Data::Enum(_) => {
            let mut arms = Vec::new();
            for variant in attrs.variants {
                match variant.class {
                    Some(own) => arms.extend(class(own, errors).map(|c| (variant.ident, c))),
                    None => match default {
                        Some(class) => arms.push((variant.ident, class)),
                        None => errors.spanned(
                            &variant.ident,
                            format!(
                                "variant `{}` has no classification: {HOW} to it, or one to the enum as the default",
                                variant.ident
                            ),
                        ),
                    },
                }
            }
            Some(Classify::Enum(arms))
        }
    }
}

/// One item's verdict: exactly one of `transient` and `permanent`.
fn class(attrs: ClassAttrs, errors: &mut Errors) -> Option<Class> {
    match (attrs.transient, attrs.permanent, attrs.retry_after) {
        (Some(_), Some(permanent), _) => {
            errors.spanned(
                permanent,
                "a failure is either `transient` or `permanent`, not both: keep one",
            );
            None
        }
        (Some(_), None, retry_after) => Some(Class::Transient {
            retry_after: retry_after.map(|(_, delay)| delay.value),
        }),
        (None, Some(_), Some((path, _))) => {
            errors.spanned(
                path,
                "`retry_after` applies to transient failures only, a permanent one is never retried: \
                 write `#[classify(transient, retry_after = \"...\")]` or drop `retry_after`",
            );
            None
        }
        (None, Some(_), None) => Some(Class::Permanent),
        (None, None, Some(_)) => {
            errors.spanned(
                &attrs.attr,
                "`retry_after` needs `transient`: write `#[classify(transient, retry_after = \"5s\")]`",
            );
            None
        }
        (None, None, None) => {
            // The attribute was malformed or empty; that error is already recorded.
            None
        }
    }
}
