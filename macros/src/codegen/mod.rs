//! Code generation: the validated models ([`crate::validate`]) as impls.
//!
//! Runtime items are named through `::backstop::__private`, so the user's
//! imports and prelude shadowing never change what the code means. After an
//! error, each derive emits a fallback with the same items and
//! `unreachable!()` bodies, so the user sees the one error and not a cascade
//! of "no method named `stack`".

pub(crate) mod classify;
pub(crate) mod handler;
pub(crate) mod payload;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput};

/// The type's own where-clause predicates followed by `extra`, as a full `where` clause.
pub(crate) fn where_clause(input: &DeriveInput, extra: &[TokenStream]) -> TokenStream {
    let own = input
        .generics
        .where_clause
        .iter()
        .flat_map(|w| w.predicates.iter());
    quote!(where #(#own,)* #(#extra,)*)
}

/// A fallback makes no sense for a union (the derives refuse them).
pub(crate) fn is_union(input: &DeriveInput) -> bool {
    matches!(input.data, Data::Union(_))
}
