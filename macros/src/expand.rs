//! The derives' common path: parse the item, read its attributes, validate,
//! generate; after an error, the errors and a fallback.

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::errors::Errors;
use crate::{attr, codegen, validate};

/// Which derive is expanding.
#[derive(Clone, Copy)]
pub(crate) enum Derive {
    Payload,
    Handler,
    Classify,
}

/// Expands `which` on `input`.
pub(crate) fn derive(input: proc_macro::TokenStream, which: Derive) -> proc_macro::TokenStream {
    let input = match syn::parse::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error().into(),
    };
    let mut errors = Errors::default();
    let generated = match which {
        Derive::Payload => payload(&input, &mut errors),
        Derive::Handler => handler(&input, &mut errors),
        Derive::Classify => classify(&input, &mut errors),
    };
    let mut output = errors.into_compile_errors();
    output.extend(generated);
    output.into()
}

fn payload(input: &DeriveInput, errors: &mut Errors) -> TokenStream {
    let attrs = attr::payload::parse(input, errors);
    let payload = validate::payload::validate(input, attrs, errors);
    if errors.is_empty() {
        codegen::payload::generate(input, &payload)
    } else {
        codegen::payload::fallback(input)
    }
}

fn handler(input: &DeriveInput, errors: &mut Errors) -> TokenStream {
    let attrs = attr::handler::parse(input, errors);
    let handler = validate::handler::validate(input, attrs, errors);
    match &handler.payload {
        Some(payload) if errors.is_empty() => codegen::handler::generate(input, &handler, payload),
        _ => codegen::handler::fallback(input, &handler),
    }
}

fn classify(input: &DeriveInput, errors: &mut Errors) -> TokenStream {
    let attrs = attr::classify::parse(input, errors);
    let classify = validate::classify::validate(input, attrs, errors);
    match &classify {
        Some(classify) if errors.is_empty() => codegen::classify::generate(input, classify),
        _ => codegen::classify::fallback(input),
    }
}
