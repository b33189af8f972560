//! Durations in attributes: parsed at compile time, emitted as constants.

use std::time::Duration;

use proc_macro2::TokenStream;
use quote::quote;
use syn::LitStr;

/// What a duration attribute accepts, for error messages.
pub(crate) const FORM: &str = "a number and a unit, such as \"250ms\", \"10s\", \"1m\", \"2h\" or \"1m 30s\" (units: ns, us, ms, s, m, h, d)";

/// A duration and the literal it was written as.
#[derive(Clone)]
pub(crate) struct SpannedDuration {
    pub(crate) value: Duration,
    pub(crate) literal: LitStr,
}

/// Parses the duration written in `literal`, as `backstop::wire::parse_duration` does at run time.
pub(crate) fn parse(literal: &LitStr, key: &str) -> syn::Result<SpannedDuration> {
    let text = literal.value();
    match humantime::parse_duration(text.trim()) {
        Ok(value) => Ok(SpannedDuration {
            value,
            literal: literal.clone(),
        }),
        Err(error) => Err(syn::Error::new_spanned(
            literal,
            format!("`{key}` is not a duration ({error}): write {FORM}"),
        )),
    }
}

/// A `Duration` constant expression of `value`.
pub(crate) fn tokens(value: Duration) -> TokenStream {
    let secs = value.as_secs();
    let nanos = value.subsec_nanos();
    quote!(::backstop::__private::Duration::new(#secs, #nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str) -> LitStr {
        LitStr::new(text, proc_macro2::Span::call_site())
    }

    #[test]
    fn units_from_nanoseconds_to_hours_parse() {
        let cases = [
            ("100ms", Duration::from_millis(100)),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("1m 30s", Duration::from_secs(90)),
            ("250us", Duration::from_micros(250)),
            (" 5ns ", Duration::from_nanos(5)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse(&lit(text), "timeout").unwrap().value,
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn text_without_a_unit_is_refused_with_the_accepted_form() {
        for text in ["10", "ten seconds", "", "5 parsecs"] {
            let error = parse(&lit(text), "timeout").err().unwrap().to_string();
            assert!(
                error.starts_with("`timeout` is not a duration ("),
                "{error}"
            );
            assert!(error.ends_with(FORM), "{error}");
        }
    }

    #[test]
    fn tokens_are_exact_to_the_nanosecond() {
        let text = tokens(Duration::new(3, 5)).to_string();
        assert_eq!(
            text,
            ":: backstop :: __private :: Duration :: new (3u64 , 5u32)"
        );
    }
}
