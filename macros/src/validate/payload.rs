//! `#[derive(Payload)]`: at most one key field, of a type that can be a key.

use syn::{Data, DeriveInput, Member, Type};

use super::key;
use crate::attr::payload::PayloadAttrs;
use crate::errors::Errors;

/// A payload type, ready to generate.
pub(crate) struct Payload {
    pub(crate) source: Option<String>,
    pub(crate) dlq: Option<String>,
    pub(crate) key: Option<Key>,
}

/// The key field.
pub(crate) struct Key {
    pub(crate) member: Member,
    pub(crate) ty: Type,
}

/// Checks `attrs` against `input`.
pub(crate) fn validate(input: &DeriveInput, attrs: PayloadAttrs, errors: &mut Errors) -> Payload {
    if let Data::Union(data) = &input.data {
        errors.spanned(
            data.union_token,
            "`Payload` cannot be derived for a union: use a struct or an enum",
        );
    }
    let mut keys = attrs.keys.into_iter();
    let key = keys.next();
    for extra in keys {
        let first = key
            .as_ref()
            .map(|k| member_text(&k.member))
            .unwrap_or_default();
        errors.spanned(
            &extra.attr,
            format!(
                "only one field can be the key, and `{first}` already is: remove this `#[payload(key)]` \
                 (or implement `Payload::key` by hand to combine fields)"
            ),
        );
    }
    let key = key.and_then(|key| {
        errors.ok(key::check(&key.ty, key.display))?;
        Some(Key {
            member: key.member,
            ty: key.ty,
        })
    });
    Payload {
        source: attrs.source.map(|s| s.value()),
        dlq: attrs.dlq.map(|s| s.value()),
        key,
    }
}

fn member_text(member: &Member) -> String {
    match member {
        Member::Named(ident) => ident.to_string(),
        Member::Unnamed(index) => index.index.to_string(),
    }
}
