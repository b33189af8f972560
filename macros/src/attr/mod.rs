//! Parsing: the derives' attributes into plain values, refusing unknown keys
//! and malformed values on the tokens at fault.
//!
//! Meaning (which combinations are valid) is checked in [`crate::validate`].

pub(crate) mod classify;
pub(crate) mod handler;
pub(crate) mod payload;

use std::fmt::Display;
use std::str::FromStr;

use proc_macro2::TokenTree;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, LitInt, LitStr, Meta, Path, Token};

use crate::duration::{self, SpannedDuration};
use crate::errors::Errors;

/// Runs `logic` on each `key` of every `#[name(key, ...)]` in `attrs`.
///
/// An error from `logic` is recorded in `errors`, the rest of that key's
/// value skipped, and the next key read, so one attribute can report several
/// mistakes. An attribute whose syntax cannot be followed is recorded and
/// left.
pub(crate) fn each_meta(
    attrs: &[Attribute],
    name: &str,
    known: &[&str],
    errors: &mut Errors,
    mut logic: impl FnMut(ParseNestedMeta<'_>, &mut Errors) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident(name)) {
        if let Meta::List(list) = &attr.meta
            && list.tokens.is_empty()
        {
            errors.spanned(
                attr,
                format!("empty `#[{name}()]`: expected {}", one_of(known)),
            );
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            let input = meta.input;
            if let Err(error) = logic(meta, errors) {
                errors.push(error);
                skip_value(input)?;
            }
            Ok(())
        });
        errors.ok(result);
    }
}

/// The error for a key that is not one of `known`, with the closest as a suggestion.
pub(crate) fn unknown_key(path: &Path, context: &str, known: &[&str]) -> syn::Error {
    let key = path_text(path);
    let suggestion = known
        .iter()
        .map(|candidate| (edit_distance(&key, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= key.len().max(candidate.len()).div_ceil(3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| format!("did you mean `{candidate}`? "))
        .unwrap_or_default();
    syn::Error::new_spanned(
        path,
        format!(
            "unknown key `{key}` in {context}: {suggestion}expected {}",
            one_of(known)
        ),
    )
}

/// `` `a`, `b` or `c` ``.
pub(crate) fn one_of(known: &[&str]) -> String {
    let quoted: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The key as written, `a::b` for a path.
pub(crate) fn path_text(path: &Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}

/// Consumes the rest of a key that could not be read (`= value` or `(...)`) up to the next comma.
pub(crate) fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// Checks that a flag key (`key`, `transient`) has no value.
pub(crate) fn flag(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        let key = path_text(&meta.path);
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("`{key}` takes no value: write `{example}`"),
        ));
    }
    Ok(())
}

/// Moves past the `=` of `key = value`, or says how the key is written.
pub(crate) fn value<'a>(meta: &ParseNestedMeta<'a>, example: &str) -> syn::Result<ParseStream<'a>> {
    if !meta.input.peek(Token![=]) {
        let key = path_text(&meta.path);
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("expected a value for `{key}`: write `{example}`"),
        ));
    }
    meta.value()
}

/// `key = "text"`.
pub(crate) fn lit_str(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitStr> {
    let input = value(meta, example)?;
    if !input.peek(LitStr) {
        return Err(input.error(format!("expected a string: write `{example}`")));
    }
    input.parse()
}

/// `key = "text"` where the text may not be empty.
pub(crate) fn name(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitStr> {
    let literal = lit_str(meta, example)?;
    if literal.value().trim().is_empty() {
        return Err(syn::Error::new_spanned(
            &literal,
            format!(
                "`{}` cannot be empty: write `{example}`",
                path_text(&meta.path)
            ),
        ));
    }
    Ok(literal)
}

/// `key = "10s"`.
pub(crate) fn duration(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<SpannedDuration> {
    let literal = lit_str(meta, example)?;
    duration::parse(&literal, &path_text(&meta.path))
}

/// `key = 5`, an integer of type `N`.
pub(crate) fn int<N>(
    meta: &ParseNestedMeta<'_>,
    example: &str,
    range: &str,
) -> syn::Result<(N, LitInt)>
where
    N: FromStr,
    N::Err: Display,
{
    let input = value(meta, example)?;
    let key = path_text(&meta.path);
    if !input.peek(LitInt) {
        return Err(input.error(format!(
            "expected a whole number for `{key}`: write `{example}`"
        )));
    }
    let literal: LitInt = input.parse()?;
    match literal.base10_parse::<N>() {
        Ok(n) => Ok((n, literal)),
        Err(_) => Err(syn::Error::new_spanned(
            &literal,
            format!("`{key}` must be a whole number from {range}"),
        )),
    }
}

/// Stores `value` in an empty `slot`, or records that the key was given twice.
pub(crate) fn set_once<T>(slot: &mut Option<T>, value: T, path: &Path, errors: &mut Errors) {
    if slot.is_some() {
        errors.spanned(
            path,
            format!("duplicate `{}`: give it once", path_text(path)),
        );
    } else {
        *slot = Some(value);
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("retry", "retries"), 3);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("payload", "payload"), 0);
        assert_eq!(edit_distance("", "dlq"), 3);
    }

    #[test]
    fn unknown_keys_suggest_the_closest_known_one() {
        let path: Path = syn::parse_quote!(timout);
        let message = unknown_key(&path, "`#[handler(...)]`", &["timeout", "retries"]).to_string();
        assert_eq!(
            message,
            "unknown key `timout` in `#[handler(...)]`: did you mean `timeout`? expected `timeout` or `retries`"
        );
        let path: Path = syn::parse_quote!(retry);
        let message = unknown_key(&path, "`#[handler(...)]`", &["timeout", "retries"]).to_string();
        assert!(message.contains("did you mean `retries`?"), "{message}");
        let path: Path = syn::parse_quote!(colour);
        let message = unknown_key(&path, "`#[payload(...)]`", &["source", "dlq"]).to_string();
        assert_eq!(
            message,
            "unknown key `colour` in `#[payload(...)]`: expected `source` or `dlq`"
        );
    }

    #[test]
    fn one_of_lists_keys_in_prose() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
