//! `impl From<E> for backstop::HandlerError` for a `#[derive(Classify)]` type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;

use crate::duration;
use crate::validate::classify::{Class, Classify};

/// The `From` impl.
pub(crate) fn generate(input: &DeriveInput, classify: &Classify) -> TokenStream {
    let ident = &input.ident;
    let body = match classify {
        Classify::Struct(class) => verdict(*class),
        Classify::Enum(arms) if arms.is_empty() => quote!(match error {}),
        Classify::Enum(arms) => {
            let arms = arms.iter().map(|(variant, class)| {
                let transient = match class {
                    Class::Transient { retry_after: None } => quote!(::backstop::__private::Option::Some(::backstop::__private::Option::None)),
                    Class::Transient { retry_after: Some(delay) } => {
                        let delay = duration::tokens(*delay);
                        quote!(::backstop::__private::Option::Some(::backstop::__private::Option::Some(#delay)))
                    }
                    Class::Permanent => quote!(::backstop::__private::Option::None),
                };
                quote!(#ident::#variant { .. } => #transient,)
            });
            quote! {
                let transient: ::backstop::__private::Option<::backstop::__private::Option<::backstop::__private::Duration>> =
                    match &error { #(#arms)* };
                match transient {
                    ::backstop::__private::Option::Some(retry_after) => {
                        let verdict = ::backstop::__private::HandlerError::transient(error);
                        match retry_after {
                            ::backstop::__private::Option::Some(delay) => verdict.retry_after(delay),
                            ::backstop::__private::Option::None => verdict,
                        }
                    }
                    ::backstop::__private::Option::None => ::backstop::__private::HandlerError::permanent(error),
                }
            }
        }
    };
    implement(input, body, true)
}

/// A `From` impl with no behaviour, emitted after an error.
pub(crate) fn fallback(input: &DeriveInput) -> TokenStream {
    if super::is_union(input) {
        return TokenStream::new();
    }
    implement(
        input,
        quote!(::backstop::__private::unreachable!(
            "`#[derive(Classify)]` failed"
        )),
        false,
    )
}

/// The verdict of a struct: one class for every value.
fn verdict(class: Class) -> TokenStream {
    match class {
        Class::Transient { retry_after: None } => {
            quote!(::backstop::__private::HandlerError::transient(error))
        }
        Class::Transient {
            retry_after: Some(delay),
        } => {
            let delay = duration::tokens(delay);
            quote!(::backstop::__private::HandlerError::transient(error).retry_after(#delay))
        }
        Class::Permanent => quote!(::backstop::__private::HandlerError::permanent(error)),
    }
}

fn implement(input: &DeriveInput, body: TokenStream, bound: bool) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    // Spanned on the type's name: a missing `Error` impl is reported there, once.
    let bounds = bound.then(|| {
        quote_spanned!(ident.span()=>
            #ident #ty_generics: ::backstop::__private::Error
                + ::backstop::__private::Send
                + ::backstop::__private::Sync
                + 'static
        )
    });
    let where_clause = super::where_clause(input, bounds.as_slice());
    let param = if bound { quote!(error) } else { quote!(_) };
    quote! {
        #[automatically_derived]
        impl #impl_generics ::backstop::__private::From<#ident #ty_generics> for ::backstop::__private::HandlerError
        #where_clause
        {
            fn from(#param: #ident #ty_generics) -> Self {
                #body
            }
        }
    }
}
