//! [`Secret`] and [`SecretUrl`]: values that are never shown.
//!
//! Both are shown as `***` (a URL keeps everything but its password) in
//! `Debug` and `Display`, so a configuration can be logged whole. Read from a
//! file or the environment, a value `@/path/to/file` is replaced by the file's
//! contents (one trailing newline dropped), the way Kubernetes mounts
//! secrets; `@@` starts a value that really begins with `@`. A secret stays
//! text even when it looks like a number (`0123` stays `0123`).

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use backstop::secret::read_secret_file;

/// A secret text (a password, a token). Shown as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// A URL that may carry a password. Shown with its password as `***`
/// ([`backstop::redact::redact_url`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to a client library, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretUrl {
    /// A URL.
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its password, for connecting, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as it may be shown (its password as `***`).
    pub fn redacted(&self) -> String {
        backstop::redact::redact_url(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(backstop::redact::HIDDEN)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(backstop::redact::HIDDEN)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `@path` read from the file, `@@x` as `@x`, anything else as it is.
fn resolve<E: de::Error>(text: &str) -> Result<String, E> {
    if let Some(rest) = text.strip_prefix("@@") {
        return Ok(format!("@{rest}"));
    }
    match text.strip_prefix('@') {
        Some(path) => read_secret_file(Path::new(path))
            .map_err(|e| E::custom(format!("cannot read the secret file {path}: {e}"))),
        None => Ok(text.to_owned()),
    }
}

/// Accepts text and, so a number-looking secret is never refused, numbers
/// and booleans as their text. Never quotes the value in an error.
struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a text value or @/path/to/file")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        resolve(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor).map(Secret)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor).map(SecretUrl)
    }
}

/// Serialized in full: for handing a configuration on to a provider, not
/// for showing (use `Debug`).
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Serialized in full, like [`Secret`].
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
