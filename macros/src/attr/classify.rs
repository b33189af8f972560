//! `#[classify(transient)]`, `#[classify(transient, retry_after = "5s")]`, `#[classify(permanent)]`.

use syn::{Attribute, Data, DeriveInput, Ident, Path};

use super::{duration, each_meta, flag, set_once, unknown_key};
use crate::duration::SpannedDuration;
use crate::errors::Errors;

const KEYS: &[&str] = &["transient", "permanent", "retry_after"];

/// What the `#[classify]` attributes of one item (the type or a variant) say.
pub(crate) struct ClassAttrs {
    /// The first `#[classify]` attribute, for errors about the whole.
    pub(crate) attr: Attribute,
    pub(crate) transient: Option<Path>,
    pub(crate) permanent: Option<Path>,
    pub(crate) retry_after: Option<(Path, SpannedDuration)>,
}

/// A variant and its classification, if it has one.
pub(crate) struct VariantAttrs {
    pub(crate) ident: Ident,
    pub(crate) class: Option<ClassAttrs>,
}

/// What the `#[classify]` attributes of a type say.
pub(crate) struct ClassifyAttrs {
    /// On the type: the default for variants without their own.
    pub(crate) default: Option<ClassAttrs>,
    /// Each variant of an enum, in order (empty for a struct).
    pub(crate) variants: Vec<VariantAttrs>,
}

/// Reads the `#[classify]` attributes of `input`.
pub(crate) fn parse(input: &DeriveInput, errors: &mut Errors) -> ClassifyAttrs {
    let default = class(&input.attrs, errors);
    let variants = match &input.data {
        Data::Enum(data) => data
            .variants
            .iter()
            .map(|variant| VariantAttrs {
                ident: variant.ident.clone(),
                class: class(&variant.attrs, errors),
            })
            .collect(),
        Data::Struct(_) | Data::Union(_) => Vec::new(),
    };
    ClassifyAttrs { default, variants }
}

/// Reads the `#[classify]` attributes on one item.
fn class(attrs: &[Attribute], errors: &mut Errors) -> Option<ClassAttrs> {
    let first = attrs.iter().find(|a| a.path().is_ident("classify"))?;
    let mut class = ClassAttrs {
        attr: first.clone(),
        transient: None,
        permanent: None,
        retry_after: None,
    };
    each_meta(attrs, "classify", KEYS, errors, |meta, errors| {
        if meta.path.is_ident("transient") {
            flag(&meta, "#[classify(transient)]")?;
            set_once(&mut class.transient, meta.path.clone(), &meta.path, errors);
        } else if meta.path.is_ident("permanent") {
            flag(&meta, "#[classify(permanent)]")?;
            set_once(&mut class.permanent, meta.path.clone(), &meta.path, errors);
        } else if meta.path.is_ident("retry_after") {
            let delay = duration(&meta, "retry_after = \"5s\"")?;
            set_once(
                &mut class.retry_after,
                (meta.path.clone(), delay),
                &meta.path,
                errors,
            );
        } else {
            return Err(unknown_key(&meta.path, "`#[classify(...)]`", KEYS));
        }
        Ok(())
    });
    Some(class)
}
