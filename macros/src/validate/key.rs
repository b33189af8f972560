//! Which field types can be an idempotency key.
//!
//! A key is text that identifies a message. The accepted types have one
//! obvious, stable text: `String` and `str` (behind a reference, `Box`, `Rc`,
//! `Arc` or `Cow`), the integers and their `NonZero` forms, and `char`. A
//! field marked `#[payload(key, display)]` may be any type with a `Display`
//! impl. Some types are never keys, even with `display`: an `Option` (a key
//! must always be there), collections, tuples, arrays and slices (no single
//! text), floats (`1.0` and `1.00` are one number) and `bool` (two values
//! cannot identify messages). The check is by name, as a macro sees only
//! tokens: a type alias of `String` needs `display`.

use syn::{GenericArgument, PathArguments, Type};

const TEXT: &[&str] = &["String", "str", "char"];
const INTEGERS: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
];
const NON_ZERO: &[&str] = &[
    "NonZero",
    "NonZeroU8",
    "NonZeroU16",
    "NonZeroU32",
    "NonZeroU64",
    "NonZeroU128",
    "NonZeroUsize",
    "NonZeroI8",
    "NonZeroI16",
    "NonZeroI32",
    "NonZeroI64",
    "NonZeroI128",
    "NonZeroIsize",
];
const POINTERS: &[&str] = &["Box", "Rc", "Arc", "Cow"];
const COLLECTIONS: &[&str] = &[
    "Vec",
    "VecDeque",
    "LinkedList",
    "HashMap",
    "HashSet",
    "BTreeMap",
    "BTreeSet",
    "BinaryHeap",
    "Bytes",
    "BytesMut",
];

const ACCEPTED: &str = "a key is a `String` (or `Box<str>`, `Cow<str>`), integer or `char` field";

/// Whether a type can be a key.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// One of the accepted types.
    Accepted,
    /// Never a key; the message says why and what to do.
    Rejected(String),
    /// Not known by name: a key only with `#[payload(key, display)]`.
    Unknown(String),
}

/// Checks that a field of type `ty` can be the key (with `display`: any `Display` type but the rejected).
pub(crate) fn check(ty: &Type, display: bool) -> syn::Result<()> {
    match verdict(ty) {
        Verdict::Accepted => Ok(()),
        Verdict::Unknown(_) if display => Ok(()),
        Verdict::Rejected(why) => Err(syn::Error::new_spanned(ty, why)),
        Verdict::Unknown(name) => Err(syn::Error::new_spanned(
            ty,
            format!(
                "cannot tell whether `{name}` can be the idempotency key: {ACCEPTED}; \
                 if `{name}` implements `Display` and its text identifies the message (like a `Uuid`), \
                 write `#[payload(key, display)]`"
            ),
        )),
    }
}

fn verdict(ty: &Type) -> Verdict {
    match ty {
        Type::Group(group) => verdict(&group.elem),
        Type::Paren(paren) => verdict(&paren.elem),
        Type::Reference(reference) => verdict(&reference.elem),
        Type::Tuple(tuple) if tuple.elems.is_empty() => {
            Verdict::Rejected(format!("`()` cannot be the idempotency key: {ACCEPTED}"))
        }
        Type::Tuple(_) => Verdict::Rejected(format!(
            "a tuple cannot be the idempotency key: {ACCEPTED}; mark one field that identifies the message, \
             or implement `Payload::key` by hand to combine several"
        )),
        Type::Array(_) | Type::Slice(_) => Verdict::Rejected(format!(
            "an array or slice cannot be the idempotency key: {ACCEPTED}; \
             implement `Payload::key` by hand to build a key from its items"
        )),
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return Verdict::Unknown(String::from("?"));
            };
            let name = last.ident.to_string();
            let name = name.as_str();
            if TEXT.contains(&name) || INTEGERS.contains(&name) || NON_ZERO.contains(&name) {
                Verdict::Accepted
            } else if POINTERS.contains(&name) {
                match last_type_argument(&last.arguments) {
                    Some(inner) => verdict(inner),
                    None => Verdict::Unknown(name.to_owned()),
                }
            } else if name == "Option" {
                Verdict::Rejected(String::from(
                    "an `Option` cannot be the idempotency key: a payload's key must always be present; \
                     make the field required, or deduplicate by message id with \
                     `#[handler(idempotency = \"message_id\")]` (or \"key_or_message_id\")",
                ))
            } else if COLLECTIONS.contains(&name) {
                Verdict::Rejected(format!(
                    "a collection (`{name}`) cannot be the idempotency key: {ACCEPTED}; \
                     implement `Payload::key` by hand to build a key from its items"
                ))
            } else if name == "f32" || name == "f64" {
                Verdict::Rejected(format!(
                    "a float cannot be the idempotency key: equal numbers can print differently \
                     and rounding makes different ones equal; {ACCEPTED}"
                ))
            } else if name == "bool" {
                Verdict::Rejected(format!(
                    "a `bool` cannot be the idempotency key: two values cannot tell messages apart; {ACCEPTED}"
                ))
            } else {
                Verdict::Unknown(name.to_owned())
            }
        }
        _ => Verdict::Rejected(format!(
            "this type cannot be the idempotency key: {ACCEPTED}"
        )),
    }
}

/// `T` of `Box<T>`, `str` of `Cow<'a, str>`.
fn last_type_argument(arguments: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(arguments) = arguments else {
        return None;
    };
    arguments
        .args
        .iter()
        .rev()
        .find_map(|argument| match argument {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn verdict_of(ty: Type) -> Verdict {
        verdict(&ty)
    }

    #[test]
    fn text_integers_and_chars_are_keys() {
        for ty in [
            parse_quote!(String),
            parse_quote!(std::string::String),
            parse_quote!(&'static str),
            parse_quote!(Box<str>),
            parse_quote!(std::sync::Arc<str>),
            parse_quote!(Cow<'static, str>),
            parse_quote!(u64),
            parse_quote!(i128),
            parse_quote!(char),
            parse_quote!(NonZeroU64),
            parse_quote!(std::num::NonZero<u32>),
        ] {
            assert_eq!(verdict_of(ty), Verdict::Accepted);
        }
    }

    #[test]
    fn options_collections_floats_bools_and_tuples_are_never_keys() {
        for ty in [
            parse_quote!(Option<String>),
            parse_quote!(Vec<u8>),
            parse_quote!(HashMap<String, String>),
            parse_quote!(f64),
            parse_quote!(bool),
            parse_quote!((String, u64)),
            parse_quote!(()),
            parse_quote!([u8; 16]),
            parse_quote!(&[u8]),
            parse_quote!(Box<Option<String>>),
            parse_quote!(fn() -> String),
        ] {
            assert!(matches!(verdict_of(ty), Verdict::Rejected(_)));
        }
    }

    #[test]
    fn other_types_need_display() {
        let ty: Type = parse_quote!(uuid::Uuid);
        assert_eq!(
            verdict_of(ty.clone()),
            Verdict::Unknown(String::from("Uuid"))
        );
        assert!(check(&ty, false).is_err());
        assert!(check(&ty, true).is_ok());
        let option: Type = parse_quote!(Option<Uuid>);
        assert!(
            check(&option, true).is_err(),
            "display does not make an Option a key"
        );
    }
}
