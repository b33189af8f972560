//! `#[payload(source = "...", dlq = "...")]` on the type, `#[payload(key)]` on a field.

use syn::{Attribute, Data, DeriveInput, Fields, LitStr, Member, Type};

use super::{each_meta, flag, name, set_once, unknown_key};
use crate::errors::Errors;

const TYPE_KEYS: &[&str] = &["source", "dlq"];
const FIELD_KEYS: &[&str] = &["key", "display"];

/// What the `#[payload]` attributes of a type say.
#[derive(Default)]
pub(crate) struct PayloadAttrs {
    /// `source = "..."`.
    pub(crate) source: Option<LitStr>,
    /// `dlq = "..."`.
    pub(crate) dlq: Option<LitStr>,
    /// Every field marked `#[payload(key)]`, in order.
    pub(crate) keys: Vec<KeyAttr>,
}

/// A field marked `#[payload(key)]`.
pub(crate) struct KeyAttr {
    /// The attribute, for errors about the mark itself.
    pub(crate) attr: Attribute,
    /// The field.
    pub(crate) member: Member,
    /// The field's type.
    pub(crate) ty: Type,
    /// `#[payload(key, display)]`: any `Display` type is accepted.
    pub(crate) display: bool,
}

/// Reads the `#[payload]` attributes of `input`.
pub(crate) fn parse(input: &DeriveInput, errors: &mut Errors) -> PayloadAttrs {
    let mut attrs = PayloadAttrs::default();
    each_meta(
        &input.attrs,
        "payload",
        TYPE_KEYS,
        errors,
        |meta, errors| {
            if meta.path.is_ident("source") {
                let source = name(&meta, "source = \"orders\"")?;
                set_once(&mut attrs.source, source, &meta.path, errors);
            } else if meta.path.is_ident("dlq") {
                let dlq = name(&meta, "dlq = \"orders.dlq\"")?;
                set_once(&mut attrs.dlq, dlq, &meta.path, errors);
            } else if meta.path.is_ident("key") {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    "`key` goes on a field: write `#[payload(key)]` above the field that identifies the message",
                ));
            } else {
                return Err(unknown_key(
                    &meta.path,
                    "`#[payload(...)]` on a type",
                    TYPE_KEYS,
                ));
            }
            Ok(())
        },
    );
    match &input.data {
        Data::Struct(data) => {
            for (index, field) in data.fields.iter().enumerate() {
                let member = match &field.ident {
                    Some(ident) => Member::Named(ident.clone()),
                    None => Member::Unnamed(index.into()),
                };
                field_attrs(&field.attrs, member, &field.ty, &mut attrs.keys, errors);
            }
        }
        Data::Enum(data) => {
            for variant in &data.variants {
                for attr in variant
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("payload"))
                {
                    errors.spanned(attr, "`#[payload(...)]` goes on the type, not on a variant");
                }
                let fields = match &variant.fields {
                    Fields::Named(f) => f.named.iter().collect(),
                    Fields::Unnamed(f) => f.unnamed.iter().collect(),
                    Fields::Unit => Vec::new(),
                };
                for attr in fields
                    .iter()
                    .flat_map(|f| &f.attrs)
                    .filter(|a| a.path().is_ident("payload"))
                {
                    errors.spanned(
                        attr,
                        "an enum payload has no key field: `#[payload(key)]` works on struct fields only; \
                         implement `Payload::key` by hand to key an enum",
                    );
                }
            }
        }
        Data::Union(_) => {}
    }
    attrs
}

/// Reads the `#[payload]` attributes of one struct field.
fn field_attrs(
    attrs: &[Attribute],
    member: Member,
    ty: &Type,
    keys: &mut Vec<KeyAttr>,
    errors: &mut Errors,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("payload")) {
        let mut key = None;
        let mut display = None;
        each_meta(
            std::slice::from_ref(attr),
            "payload",
            FIELD_KEYS,
            errors,
            |meta, errors| {
                if meta.path.is_ident("key") {
                    flag(&meta, "#[payload(key)]")?;
                    set_once(&mut key, meta.path.clone(), &meta.path, errors);
                } else if meta.path.is_ident("display") {
                    flag(&meta, "#[payload(key, display)]")?;
                    set_once(&mut display, meta.path.clone(), &meta.path, errors);
                } else if meta.path.is_ident("source") || meta.path.is_ident("dlq") {
                    return Err(syn::Error::new_spanned(
                        &meta.path,
                        "`source` and `dlq` go on the type, not on a field",
                    ));
                } else {
                    return Err(unknown_key(
                        &meta.path,
                        "`#[payload(...)]` on a field",
                        FIELD_KEYS,
                    ));
                }
                Ok(())
            },
        );
        match (key, display) {
            (Some(_), display) => keys.push(KeyAttr {
                attr: attr.clone(),
                member: member.clone(),
                ty: ty.clone(),
                display: display.is_some(),
            }),
            (None, Some(display)) => {
                errors.spanned(
                    display,
                    "`display` only goes with `key`: write `#[payload(key, display)]`",
                );
            }
            (None, None) => {}
        }
    }
}
