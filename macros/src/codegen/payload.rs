//! `impl backstop::Payload` for a `#[derive(Payload)]` type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use crate::validate::payload::Payload;

/// The `Payload` impl.
pub(crate) fn generate(input: &DeriveInput, payload: &Payload) -> TokenStream {
    let key = payload.key.as_ref().map(|key| {
        let member = &key.member;
        // Spanned on the field's type: a `display` key without `Display` is reported there.
        let text = quote_spanned!(key.ty.span()=> text(&self.#member));
        quote! {
            fn key(&self) -> ::backstop::__private::Option<::backstop::__private::String> {
                fn text<K: ::backstop::__private::Display + ?Sized>(key: &K) -> ::backstop::__private::String {
                    ::backstop::__private::ToString::to_string(key)
                }
                ::backstop::__private::Option::Some(#text)
            }
        }
    });
    let source = payload.source.as_ref().map(|source| {
        quote! {
            fn default_source() -> ::backstop::__private::Option<&'static str> {
                ::backstop::__private::Option::Some(#source)
            }
        }
    });
    let dlq = payload.dlq.as_ref().map(|dlq| {
        quote! {
            fn default_dlq() -> ::backstop::__private::Option<&'static str> {
                ::backstop::__private::Option::Some(#dlq)
            }
        }
    });
    let decode = quote! {
        fn decode(bytes: &[u8]) -> ::backstop::__private::Result<Self, ::backstop::__private::DecodeError> {
            ::backstop::__private::json::<Self>(bytes)
        }
    };
    // Spanned on the type's name: a missing `Deserialize` impl is reported there, once.
    let ident = &input.ident;
    let deserialize = quote_spanned!(ident.span()=> Self: ::backstop::__private::DeserializeOwned);
    implement(input, &[deserialize], quote!(#decode #key #source #dlq))
}

/// A `Payload` impl with the right shape and no behaviour, emitted after an error.
pub(crate) fn fallback(input: &DeriveInput) -> TokenStream {
    if super::is_union(input) {
        return TokenStream::new();
    }
    implement(
        input,
        &[],
        quote! {
            fn decode(_: &[u8]) -> ::backstop::__private::Result<Self, ::backstop::__private::DecodeError> {
                ::backstop::__private::unreachable!("`#[derive(Payload)]` failed")
            }
        },
    )
}

fn implement(input: &DeriveInput, bounds: &[TokenStream], body: TokenStream) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    let where_clause = super::where_clause(input, bounds);
    quote! {
        #[automatically_derived]
        impl #impl_generics ::backstop::__private::Payload for #ident #ty_generics #where_clause {
            #body
        }
    }
}
