//! [`Headers`] in serialized form (the spool, the CLI's export).
//!
//! Headers under distinct names are written as a map of name → value, the
//! form earlier releases wrote for text; where a name repeats, as a list of
//! `[name, value]` pairs. A value is a string for text, `null` for null, and
//! `{"bytes": "<hex>"}` or `{"amqp": …}` for bytes and AMQP field values.
//! Both forms are read.

use std::fmt;

use bytes::Bytes;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AmqpValue, HeaderValue, Headers};

/// A value in serialized form: text as a string, null as `null`, bytes and
/// AMQP values as a one-key object (`{"bytes": "<hex>"}`, `{"amqp": …}`).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Text(String),
    Typed(Typed),
    Null(()),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Typed {
    Bytes(String),
    Amqp(AmqpValue),
}

impl From<&HeaderValue> for Wire {
    fn from(value: &HeaderValue) -> Self {
        match value {
            HeaderValue::Text(text) => Wire::Text(text.clone()),
            HeaderValue::Bytes(bytes) => Wire::Typed(Typed::Bytes(hex::encode(bytes))),
            HeaderValue::Amqp(value) => Wire::Typed(Typed::Amqp(value.clone())),
            HeaderValue::Null => Wire::Null(()),
        }
    }
}

impl Wire {
    fn into_value<E: serde::de::Error>(self) -> Result<HeaderValue, E> {
        Ok(match self {
            Wire::Text(text) => HeaderValue::Text(text),
            Wire::Typed(Typed::Bytes(hex)) => {
                HeaderValue::Bytes(Bytes::from(hex::decode(hex).map_err(E::custom)?))
            }
            Wire::Typed(Typed::Amqp(value)) => HeaderValue::Amqp(value),
            Wire::Null(()) => HeaderValue::Null,
        })
    }
}

impl Headers {
    /// True when no name repeats: the map form holds them.
    fn has_unique_names(&self) -> bool {
        self.entries
            .iter()
            .enumerate()
            .all(|(i, (name, _))| !self.entries[..i].iter().any(|(n, _)| n == name))
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.has_unique_names() {
            let mut map = s.serialize_map(Some(self.entries.len()))?;
            for (name, value) in &self.entries {
                map.serialize_entry(name, &Wire::from(value))?;
            }
            map.end()
        } else {
            let mut seq = s.serialize_seq(Some(self.entries.len()))?;
            for (name, value) in &self.entries {
                seq.serialize_element(&(name, Wire::from(value)))?;
            }
            seq.end()
        }
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = Headers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of header names to values, or a list of [name, value] pairs")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
        let mut headers = Headers::new();
        while let Some((name, value)) = map.next_entry::<String, Wire>()? {
            headers.insert_value(name, value.into_value()?);
        }
        Ok(headers)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
        let mut headers = Headers::new();
        while let Some((name, value)) = seq.next_element::<(String, Wire)>()? {
            headers.append(name, value.into_value()?);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_headers_keep_the_map_form() {
        let h: Headers = [("a", "1"), ("b", "2")].into_iter().collect();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"a":"1","b":"2"}"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
    }

    #[test]
    fn typed_headers_round_trip() {
        let mut h = Headers::new();
        h.append("x", "text");
        h.append("k", HeaderValue::Bytes(Bytes::from_static(&[0xff, 0])));
        h.append("k", HeaderValue::Null);
        h.append(
            "t",
            AmqpValue::Table(vec![("n".into(), AmqpValue::Double(1.5f64.to_bits()))]),
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(
            json.starts_with(r#"[["x","text"],["k",{"bytes":"ff00"}],["k",null]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
        h.remove("k");
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with(r#"{"x":"text","t":{"amqp""#), "{json}");
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
    }
}
