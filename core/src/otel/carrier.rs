//! [`Headers`] as an OpenTelemetry carrier: [`HeaderExtractor`] reads,
//! [`HeaderInjector`] writes.

use opentelemetry::propagation::{Extractor, Injector};

use crate::message::Headers;
use crate::wire;

/// Reads trace context from message headers (an OpenTelemetry
/// [`Extractor`]).
///
/// A header is read through its text view ([`Headers::get`]): text, UTF-8
/// bytes (Kafka) or an AMQP string. A name that repeats reads as absent:
/// two `traceparent`s are no trace context, so a forged second one can
/// neither win nor be mixed with the first. A `traceparent` reads only
/// when it has the exact W3C shape (the propagator alone would take a short
/// or padded id).
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self
            .0
            .iter_values()
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value);
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let text = value.as_text()?;
        (key != wire::TRACEPARENT || well_formed(text)).then_some(text)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name).collect()
    }
}

/// True when `value` has the W3C `traceparent` shape: a version of two
/// lowercase hex digits (not `ff`), then a 32-digit trace id, a 16-digit
/// parent id and two flag digits, separated by `-`; version `00` ends there,
/// a later version may add `-` and more. (All-zero ids are the
/// propagator's to refuse.)
fn well_formed(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    b.len() >= 55
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && b[2] == b'-'
        && hex(&b[3..35])
        && b[35] == b'-'
        && hex(&b[36..52])
        && b[52] == b'-'
        && hex(&b[53..55])
        && (b.len() == 55 || (&b[0..2] != b"00" && b[55] == b'-'))
}

/// Writes trace context into message headers (an OpenTelemetry
/// [`Injector`]): each name is set as text, replacing every value it had.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::HeaderValue;

    #[test]
    fn a_repeated_name_reads_as_absent() {
        let mut headers = Headers::new();
        headers.append("tracestate", "a");
        assert_eq!(HeaderExtractor(&headers).get("tracestate"), Some("a"));
        headers.append("tracestate", "b");
        assert_eq!(HeaderExtractor(&headers).get("tracestate"), None);
    }

    #[test]
    fn only_the_exact_w3c_shape_reads() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert!(well_formed(&format!("00-{id}-01")));
        assert!(well_formed(&format!("01-{id}-01-later")));
        for bad in [
            format!("00-{id}-01-later"),
            format!("01-{id}-01later"),
            format!("ff-{id}-01"),
            format!(" 00-{id}-01"),
            format!("00-{id}-1"),
            format!("00-{}-01", id.to_uppercase()),
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01xx".to_owned(),
            "é".repeat(30),
        ] {
            assert!(!well_formed(&bad), "{bad}");
        }
    }

    #[test]
    fn a_value_without_text_reads_as_absent() {
        let mut headers = Headers::new();
        headers.append("traceparent", HeaderValue::Bytes(vec![0xff, 0xfe].into()));
        assert_eq!(HeaderExtractor(&headers).get("traceparent"), None);
        assert!(HeaderExtractor(&headers).keys().is_empty());
    }

    #[test]
    fn set_replaces_every_value() {
        let mut headers = Headers::new();
        headers.append("traceparent", "old");
        headers.append("traceparent", "older");
        HeaderInjector(&mut headers).set("traceparent", "new".into());
        assert_eq!(headers.get_all("traceparent").count(), 1);
        assert_eq!(headers.get("traceparent"), Some("new"));
    }
}
