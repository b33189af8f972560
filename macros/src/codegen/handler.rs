//! The inherent constructors of a `#[derive(Handler)]` type (and its
//! `router` with `routes(...)`).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Type};

use crate::attr::handler::Idempotency;
use crate::duration;
use crate::validate::handler::Handler;

/// `CONCURRENCY`, `source_name`, `stack_builder`, `stack`, `runner` and `runner_with`.
pub(crate) fn generate(input: &DeriveInput, handler: &Handler, payload: &Type) -> TokenStream {
    let concurrency = handler.concurrency;
    let source = match &handler.source {
        Some(source) => quote!(::backstop::__private::Option::Some(#source)),
        None => quote!(<#payload as ::backstop::__private::Payload>::default_source()),
    };
    let retry = handler.retry.as_ref().map(|retry| {
        let policy = match retry.retries {
            Some(n) => quote!(::backstop::__private::RetryPolicy::retries(#n)),
            None => quote!(
                <::backstop::__private::RetryPolicy as ::backstop::__private::Default>::default()
            ),
        };
        let backoff = retry.backoff.map(|(initial, max)| {
            let (initial, max) = (duration::tokens(initial), duration::tokens(max));
            quote!(.backoff(#initial, #max))
        });
        quote!(.retry(#policy #backoff))
    });
    let timeout = handler.timeout.map(|timeout| {
        let timeout = duration::tokens(timeout);
        quote!(.timeout(#timeout))
    });
    let key_source = match handler.idempotency {
        Idempotency::Key => Some(quote!(Payload)),
        Idempotency::MessageId => Some(quote!(MessageId)),
        Idempotency::KeyOrMessageId => Some(quote!(PayloadOrMessageId)),
        Idempotency::None => None,
    };
    let idempotency = key_source
        .map(|variant| quote!(.idempotency(store, ::backstop::__private::KeySource::#variant)));
    let dlq = handler
        .dlq
        .as_ref()
        .map(|dlq| quote!(.dead_letter_to(#dlq)));
    let sinks = Sinks::of(handler.idempotency);
    let (params, args) = (&sinks.params, &sinks.args);
    // Spanned on `payload = T` (or each route's type): a missing `Payload`
    // or `Handle<T>` impl is reported there, once.
    let handled: Vec<&Type> = match &handler.routes {
        Some(routes) => routes.iter().map(|(_, payload)| payload).collect(),
        None => vec![payload],
    };
    let bounds: Vec<TokenStream> = handled
        .iter()
        .flat_map(|payload| {
            [
                quote_spanned!(payload.span()=> #payload: ::backstop::__private::Payload),
                quote_spanned!(payload.span()=> Self: ::backstop::__private::Handle<#payload>),
            ]
        })
        .collect();
    let router = handler
        .routes
        .as_ref()
        .map(|routes| router(routes, handler.type_from.as_ref()));
    let handler_value = match router {
        Some(_) => quote!(self.router()),
        None => quote!(self),
    };
    let methods = Methods {
        concurrency: quote!(#concurrency),
        source_name: source,
        stack_builder: Some((
            quote!(::backstop::__private::StackBuilder<#payload>),
            quote! {
                ::backstop::__private::StackBuilder::<#payload>::new(dead_letter)
                    #retry #timeout #idempotency #dlq
            },
        )),
        router,
        stack: quote!(Self::stack_builder(#args).build(#handler_value)),
        runner: quote! {
            ::backstop::__private::Runner::new(source, self.stack(#args)).concurrency(Self::CONCURRENCY)
        },
        runner_with: quote! {
            let stack = Self::stack_builder(#args).settings(settings).build(#handler_value);
            ::backstop::__private::Runner::new(source, stack)
                .concurrency(settings.concurrency_or(Self::CONCURRENCY))
        },
    };
    methods.implement(input, &bounds, params, &TokenStream::new())
}

/// `router`: the routes of `routes(...)` around one shared handler.
fn router(routes: &[(String, Type)], type_from: Option<&syn::ExprPath>) -> TokenStream {
    let routes = routes.iter().map(|(name, payload)| {
        quote_spanned!(payload.span()=>
            .route::<#payload, _>(#name, ::backstop::__private::Arc::clone(&__backstop_handler))
        )
    });
    let type_from = type_from.map(|function| quote!(.type_from(#function)));
    quote! {
        /// The router of `#[handler(routes(...))]`: each message type to
        /// this handler's `Handle` impl for its payload type.
        pub fn router(self) -> ::backstop::__private::Router<impl ::backstop::__private::Routes> {
            // Prefixed: the user's `type_from` path is expanded in this scope.
            let __backstop_handler = ::backstop::__private::Arc::new(self);
            let __backstop_router = ::backstop::__private::Router::builder() #(#routes)* #type_from;
            match __backstop_router.build() {
                ::backstop::__private::Result::Ok(router) => router,
                ::backstop::__private::Result::Err(error) => ::backstop::__private::unreachable!(
                    "`#[derive(Handler)]` checked the routes: {}", error
                ),
            }
        }
    }
}

/// The same items with `unreachable!()` bodies, emitted after an error.
pub(crate) fn fallback(input: &DeriveInput, handler: &Handler) -> TokenStream {
    if super::is_union(input) {
        return TokenStream::new();
    }
    let unreachable = quote!(::backstop::__private::unreachable!(
        "`#[derive(Handler)]` failed"
    ));
    let sinks = Sinks::of(handler.idempotency);
    let methods = Methods {
        concurrency: quote!(1),
        source_name: unreachable.clone(),
        stack_builder: handler.payload.as_ref().map(|payload| {
            (
                quote!(::backstop::__private::StackBuilder<#payload>),
                unreachable.clone(),
            )
        }),
        router: handler.routes.as_ref().map(|_| {
            quote! {
                /// The router of `#[handler(routes(...))]`.
                pub fn router(self) -> ::backstop::__private::Router<()> {
                    #unreachable
                }
            }
        }),
        stack: unreachable.clone(),
        runner: unreachable.clone(),
        runner_with: unreachable,
    };
    methods.implement(
        input,
        &[],
        &sinks.params,
        &quote!(#[allow(unused_variables)]),
    )
}

/// The sink parameters of the constructors: a store only when the handler deduplicates.
struct Sinks {
    params: TokenStream,
    args: TokenStream,
}

impl Sinks {
    fn of(idempotency: Idempotency) -> Self {
        let dead_letter = quote! {
            dead_letter: ::backstop::__private::Arc<dyn ::backstop::__private::DeadLetterSink>
        };
        match idempotency {
            Idempotency::None => Sinks {
                params: dead_letter,
                args: quote!(dead_letter),
            },
            _ => Sinks {
                params: quote!(#dead_letter, store: ::backstop::__private::Arc<dyn ::backstop::__private::Store>),
                args: quote!(dead_letter, store),
            },
        }
    }
}

/// The bodies of the generated items.
struct Methods {
    concurrency: TokenStream,
    source_name: TokenStream,
    /// The return type and body; left out of a fallback that does not know the payload type.
    stack_builder: Option<(TokenStream, TokenStream)>,
    /// The whole `router` method, for a handler with routes.
    router: Option<TokenStream>,
    stack: TokenStream,
    runner: TokenStream,
    runner_with: TokenStream,
}

impl Methods {
    fn implement(
        self,
        input: &DeriveInput,
        bounds: &[TokenStream],
        params: &TokenStream,
        lints: &TokenStream,
    ) -> TokenStream {
        let ident = &input.ident;
        let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
        let where_clause = super::where_clause(input, bounds);
        let Methods {
            concurrency,
            source_name,
            stack_builder,
            router,
            stack,
            runner,
            runner_with,
        } = self;
        let stack_builder = stack_builder.map(|(ty, body)| {
            quote! {
                /// The stack builder configured by `#[handler(...)]`: add what the
                /// attributes do not say (a retry sink, a payload limit), then
                /// `build` it with this handler.
                pub fn stack_builder(#params) -> #ty {
                    #body
                }
            }
        });
        quote! {
            #[automatically_derived]
            #[allow(dead_code)]
            #lints
            impl #impl_generics #ident #ty_generics #where_clause {
                /// The most messages this handler runs at once: `#[handler(concurrency = ...)]`, 1 by default.
                pub const CONCURRENCY: usize = #concurrency;

                /// The queue or topic to consume: `#[handler(source = ...)]`, else the payload's `#[payload(source = ...)]`.
                pub fn source_name() -> ::backstop::__private::Option<&'static str> {
                    #source_name
                }

                #stack_builder

                #router

                /// The stack configured by `#[handler(...)]`, around this handler.
                pub fn stack(self, #params) -> ::backstop::__private::Stack {
                    #stack
                }

                /// A runner of this handler's stack over `source`, at most `CONCURRENCY` messages at once.
                pub fn runner<BackstopSource: ::backstop::__private::Source>(
                    self,
                    source: BackstopSource,
                    #params
                ) -> ::backstop::__private::Runner<BackstopSource, ::backstop::__private::Stack> {
                    #runner
                }

                /// Like `runner`, with what a configuration sets for this consumer
                /// (`backstop::settings::Settings`) over the attributes: only the
                /// keys it sets override them.
                pub fn runner_with<BackstopSource: ::backstop::__private::Source>(
                    self,
                    source: BackstopSource,
                    #params,
                    settings: &::backstop::__private::Settings,
                ) -> ::backstop::__private::Runner<BackstopSource, ::backstop::__private::Stack> {
                    #runner_with
                }
            }
        }
    }
}
