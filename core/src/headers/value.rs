//! One header value: text, bytes, an AMQP field value, or null.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The value of one header, as the broker carried it.
///
/// Kafka header values are bytes or null; AMQP header values are typed
/// field values ([`AmqpValue`]); backstop's own headers ([`wire`](crate::wire))
/// and headers set through the text API are [`Text`](HeaderValue::Text).
/// Each adapter writes back what it read, so a copy carries a header
/// unchanged, byte for byte and type for type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderValue {
    /// UTF-8 text (an AMQP long string, Kafka bytes).
    Text(String),
    /// Bytes of any kind (a Kafka header value as the producer wrote it).
    Bytes(#[serde(with = "hex_bytes")] Bytes),
    /// An AMQP field value of any type, kept as RabbitMQ delivered it.
    Amqp(AmqpValue),
    /// A null value (a Kafka header without a value).
    Null,
}

/// An AMQP 0-9-1 field value (RabbitMQ's field types), as plain data.
///
/// Floats are kept as their IEEE 754 bits, so a value compares and
/// round-trips exactly (NaN included).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmqpValue {
    /// `t`: a boolean.
    Boolean(bool),
    /// `b`: a signed 8-bit integer.
    ShortShortInt(i8),
    /// `B`: an unsigned 8-bit integer.
    ShortShortUInt(u8),
    /// `s`: a signed 16-bit integer.
    ShortInt(i16),
    /// `u`: an unsigned 16-bit integer.
    ShortUInt(u16),
    /// `I`: a signed 32-bit integer.
    LongInt(i32),
    /// `i`: an unsigned 32-bit integer.
    LongUInt(u32),
    /// `l`: a signed 64-bit integer.
    LongLongInt(i64),
    /// `f`: a 32-bit float, as [`f32::to_bits`].
    Float(u32),
    /// `d`: a 64-bit float, as [`f64::to_bits`].
    Double(u64),
    /// `D`: `value / 10^scale`.
    Decimal {
        /// The number of decimal digits after the point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// A short string (at most 255 bytes).
    ShortString(String),
    /// `S`: a long string: bytes, not necessarily UTF-8.
    LongString(#[serde(with = "hex_bytes")] Bytes),
    /// `A`: an array of values.
    Array(Vec<AmqpValue>),
    /// `T`: seconds since the epoch.
    Timestamp(u64),
    /// `F`: a nested table, in order.
    Table(Vec<(String, AmqpValue)>),
    /// `x`: a byte array.
    ByteArray(#[serde(with = "hex_bytes")] Bytes),
    /// `V`: no value.
    Void,
}

impl HeaderValue {
    /// The value as text, if it is text: [`Text`](Self::Text), UTF-8
    /// [`Bytes`](Self::Bytes), and AMQP short and UTF-8 long strings.
    /// Numbers and other typed values have no text view (render them with
    /// [`Display`](fmt::Display)).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(text) => Some(text),
            HeaderValue::Bytes(bytes) => std::str::from_utf8(bytes).ok(),
            HeaderValue::Amqp(value) => value.as_text(),
            HeaderValue::Null => None,
        }
    }

    /// The value's bytes as a Kafka header carries them: text and bytes as
    /// they are, AMQP strings and byte arrays as their bytes, other AMQP
    /// values rendered as text ([`Display`](fmt::Display)), and `None` for
    /// null and AMQP void.
    pub fn to_bytes(&self) -> Option<Bytes> {
        match self {
            HeaderValue::Text(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
            HeaderValue::Bytes(bytes) => Some(bytes.clone()),
            HeaderValue::Amqp(AmqpValue::LongString(b) | AmqpValue::ByteArray(b)) => {
                Some(b.clone())
            }
            HeaderValue::Amqp(AmqpValue::ShortString(s)) => {
                Some(Bytes::copy_from_slice(s.as_bytes()))
            }
            HeaderValue::Amqp(AmqpValue::Void) | HeaderValue::Null => None,
            HeaderValue::Amqp(other) => Some(Bytes::from(other.to_string())),
        }
    }

    /// The number of bytes the value takes on the wire, roughly (for size limits).
    pub fn wire_len(&self) -> usize {
        match self {
            HeaderValue::Text(text) => text.len(),
            HeaderValue::Bytes(bytes) => bytes.len(),
            HeaderValue::Amqp(value) => value.wire_len(),
            HeaderValue::Null => 0,
        }
    }
}

impl AmqpValue {
    /// The value as text, if it is a short string or a UTF-8 long string.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            AmqpValue::ShortString(s) => Some(s),
            AmqpValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The encoded size of the value, roughly (type tag and length prefixes included).
    pub fn wire_len(&self) -> usize {
        1 + match self {
            AmqpValue::Boolean(_) | AmqpValue::ShortShortInt(_) | AmqpValue::ShortShortUInt(_) => 1,
            AmqpValue::ShortInt(_) | AmqpValue::ShortUInt(_) => 2,
            AmqpValue::LongInt(_) | AmqpValue::LongUInt(_) | AmqpValue::Float(_) => 4,
            AmqpValue::Decimal { .. } => 5,
            AmqpValue::LongLongInt(_) | AmqpValue::Double(_) | AmqpValue::Timestamp(_) => 8,
            AmqpValue::ShortString(s) => 1 + s.len(),
            AmqpValue::LongString(b) | AmqpValue::ByteArray(b) => 4 + b.len(),
            AmqpValue::Array(values) => 4 + values.iter().map(Self::wire_len).sum::<usize>(),
            AmqpValue::Table(fields) => {
                4 + fields
                    .iter()
                    .map(|(name, v)| 1 + name.len() + v.wire_len())
                    .sum::<usize>()
            }
            AmqpValue::Void => 0,
        }
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue::Text(text)
    }
}

impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue::Text(text.to_owned())
    }
}

impl From<Bytes> for HeaderValue {
    fn from(bytes: Bytes) -> Self {
        HeaderValue::Bytes(bytes)
    }
}

impl From<AmqpValue> for HeaderValue {
    fn from(value: AmqpValue) -> Self {
        HeaderValue::Amqp(value)
    }
}

/// Text as it is; bytes that are not UTF-8 as `0x` and hex; null as `null`.
impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Text(text) => f.write_str(text),
            HeaderValue::Bytes(bytes) => write_bytes(f, bytes),
            HeaderValue::Amqp(value) => value.fmt(f),
            HeaderValue::Null => f.write_str("null"),
        }
    }
}

/// Numbers in decimal, booleans as `true`/`false`, timestamps as seconds,
/// decimals as `value / 10^scale` in decimal, strings as text (`0x…` when not UTF-8),
/// arrays as `[a, b]`, tables as `{name: value}`, void as `void`.
impl fmt::Display for AmqpValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpValue::Boolean(v) => v.fmt(f),
            AmqpValue::ShortShortInt(v) => v.fmt(f),
            AmqpValue::ShortShortUInt(v) => v.fmt(f),
            AmqpValue::ShortInt(v) => v.fmt(f),
            AmqpValue::ShortUInt(v) => v.fmt(f),
            AmqpValue::LongInt(v) => v.fmt(f),
            AmqpValue::LongUInt(v) => v.fmt(f),
            AmqpValue::LongLongInt(v) => v.fmt(f),
            AmqpValue::Float(bits) => f32::from_bits(*bits).fmt(f),
            AmqpValue::Double(bits) => f64::from_bits(*bits).fmt(f),
            AmqpValue::Decimal { scale, value } => {
                (f64::from(*value) / 10f64.powi(i32::from(*scale))).fmt(f)
            }
            AmqpValue::ShortString(s) => f.write_str(s),
            AmqpValue::LongString(b) | AmqpValue::ByteArray(b) => write_bytes(f, b),
            AmqpValue::Timestamp(v) => v.fmt(f),
            AmqpValue::Array(values) => {
                f.write_str("[")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    v.fmt(f)?;
                }
                f.write_str("]")
            }
            AmqpValue::Table(fields) => {
                f.write_str("{")?;
                for (i, (name, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name}: {v}")?;
                }
                f.write_str("}")
            }
            AmqpValue::Void => f.write_str("void"),
        }
    }
}

fn write_bytes(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    match std::str::from_utf8(bytes) {
        Ok(text) => f.write_str(text),
        Err(_) => write!(f, "0x{}", hex::encode(bytes)),
    }
}

/// Bytes as a hex string in serialized headers.
mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}
