//! Message headers: an ordered multimap of name → typed value.
//!
//! Brokers carry more than text: Kafka header values are bytes or null and a
//! name may repeat; AMQP header values are typed (integers, booleans,
//! timestamps, byte arrays, nested tables, void). [`Headers`] keeps every
//! entry in order with its [`HeaderValue`], so retry copies, dead letters
//! and redrives carry a producer's headers unchanged.
//!
//! Two views:
//!
//! - **Text** (what [`wire`](crate::wire) and most handlers need):
//!   [`get`](Headers::get), [`insert`](Headers::insert) (replaces every
//!   value of the name), [`iter`](Headers::iter). A value has a text view
//!   when it is text ([`HeaderValue::as_text`]).
//! - **Typed**: [`get_value`](Headers::get_value),
//!   [`get_all`](Headers::get_all), [`append`](Headers::append),
//!   [`iter_values`](Headers::iter_values).
//!
//! Where a name repeats, the single-value getters read its **last** value
//! (as Kafka's `lastHeader` does); [`get_all`](Headers::get_all) reads all.
//!
//! ```
//! use backstop::headers::{HeaderValue, Headers};
//!
//! let mut headers = Headers::new();
//! headers.append("trace", HeaderValue::Bytes(vec![0xff, 0x00].into()));
//! headers.append("trace", HeaderValue::Null);
//! headers.insert("x-backstop-attempt", "2");
//! assert_eq!(headers.get("x-backstop-attempt"), Some("2"));
//! assert_eq!(headers.get_all("trace").count(), 2);
//! assert_eq!(headers.get_value("trace"), Some(&HeaderValue::Null));
//! ```
//!
//! # Lazy parsing later
//!
//! Every accessor returns a borrowed view (`&str`, `&HeaderValue`) or an
//! iterator, never the storage itself, and entries are only added through
//! methods. A later change can therefore keep the broker's encoded header
//! block as received (`Bytes` of the AMQP field table or the Kafka header
//! list) with an index of entry offsets built on first access, parse a
//! value only when it is read, and re-encode only when an entry was
//! changed (an unchanged block is written back as the same bytes), without
//! changing this API.

mod serde;
mod value;

use std::borrow::Cow;

pub use self::value::{AmqpValue, HeaderValue};

/// Message headers: names in order, each with a typed value; names may repeat.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    entries: Vec<(Name, HeaderValue)>,
}

/// A header's name: backstop's own names (the [`wire`](crate::wire)
/// constants) are kept as the constant, so a received message's
/// `x-backstop-*` headers cost no allocation for their names.
type Name = Cow<'static, str>;

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// No headers, with room for `n` without reallocating.
    ///
    /// ```
    /// let mut headers = backstop::message::Headers::with_capacity(1);
    /// headers.insert("x-tenant", "acme");
    /// assert_eq!(headers.get("x-tenant"), Some("acme"));
    /// ```
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(n),
        }
    }

    /// The text view of the last value of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_value(name).and_then(HeaderValue::as_text)
    }

    /// The last value of `name`, of any type.
    pub fn get_value(&self, name: &str) -> Option<&HeaderValue> {
        self.entries
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Sets `name` to `text`, replacing every value it had (in the place of
    /// its first one, or at the end).
    pub fn insert(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.insert_value(name, HeaderValue::Text(text.into()));
    }

    /// Sets `name` to `value`, replacing every value it had (in the place of
    /// its first one, or at the end).
    pub fn insert_value(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        let name: Name = Cow::Owned(name.into());
        let value = value.into();
        match self.entries.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                self.entries[first].1 = value;
                let mut index = 0;
                self.entries.retain(|(n, _)| {
                    index += 1;
                    index - 1 <= first || *n != name
                });
            }
            None => self.entries.push((name, value)),
        }
    }

    /// Adds a value for `name` after all others, keeping the values it had.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        self.entries.push((Cow::Owned(name.into()), value.into()));
    }

    /// [`append`](Self::append) for a name read from a broker's header
    /// block: one of backstop's own names is kept as its constant (no
    /// allocation), any other is copied.
    pub(crate) fn append_received(&mut self, name: &str, value: HeaderValue) {
        let name = match crate::wire::own_name(name) {
            Some(own) => Cow::Borrowed(own),
            None => Cow::Owned(name.to_owned()),
        };
        self.entries.push((name, value));
    }

    /// Removes every value of `name`; returns the last one, if any.
    pub fn remove(&mut self, name: &str) -> Option<HeaderValue> {
        let mut last = None;
        let mut kept = Vec::with_capacity(self.entries.len());
        for (n, v) in self.entries.drain(..) {
            if n == name {
                last = Some(v);
            } else {
                kept.push((n, v));
            }
        }
        self.entries = kept;
        last
    }

    /// True when `name` has a value (of any type).
    pub fn contains_key(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    /// The entries whose value has a text view, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|(n, v)| Some((n.as_ref(), v.as_text()?)))
    }

    /// Every entry, in order, with its typed value.
    pub fn iter_values(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v))
    }

    /// The number of entries (a repeated name counts each time).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes the names and values take, roughly (for size limits).
    pub fn wire_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(n, v)| n.len() + v.wire_len())
            .sum()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter()).finish()
    }
}

/// Text entries, each [`insert`](Headers::insert)ed (a later one replaces an
/// earlier one of the same name).
impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(iter);
        headers
    }
}

/// [`insert`](Headers::insert)s each text entry.
impl<N: Into<String>, V: Into<String>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        for (name, value) in iter {
            self.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn sample() -> Headers {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("bin", HeaderValue::Bytes(Bytes::from_static(&[0xff, 0x00])));
        h.append("a", HeaderValue::Null);
        h.append("n", AmqpValue::LongInt(-5));
        h.append("a", "3");
        h
    }

    #[test]
    fn a_received_own_name_is_its_constant_and_reads_as_any_other() {
        let mut h = Headers::new();
        h.append_received(crate::wire::MESSAGE_ID, HeaderValue::from("m-1"));
        h.append_received("x-tenant", HeaderValue::from("acme"));
        h.append_received("x-backstop-message-i", HeaderValue::Null);
        assert!(matches!(h.entries[0].0, Cow::Borrowed(_)), "no allocation");
        assert!(matches!(h.entries[1].0, Cow::Owned(_)));
        assert!(
            matches!(h.entries[2].0, Cow::Owned(_)),
            "a prefix is not a name"
        );
        assert_eq!(h.get(crate::wire::MESSAGE_ID), Some("m-1"));
        assert_eq!(h.get("x-tenant"), Some("acme"));
        let mut same = Headers::new();
        same.append(crate::wire::MESSAGE_ID, "m-1");
        same.append("x-tenant", "acme");
        same.append("x-backstop-message-i", HeaderValue::Null);
        assert_eq!(h, same, "equal whatever holds the name");
        h.insert(crate::wire::MESSAGE_ID, "m-2");
        assert_eq!(h.get(crate::wire::MESSAGE_ID), Some("m-2"));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn repeated_names_keep_their_order_and_the_last_wins_for_get() {
        let h = sample();
        assert_eq!(h.len(), 5);
        assert_eq!(h.get("a"), Some("3"));
        let all: Vec<_> = h.get_all("a").cloned().collect();
        assert_eq!(all, ["1".into(), HeaderValue::Null, "3".into()]);
        assert_eq!(h.get("bin"), None, "not UTF-8: no text view");
        assert_eq!(h.get("n"), None, "an integer has no text view");
        assert_eq!(
            h.get_value("n"),
            Some(&HeaderValue::Amqp(AmqpValue::LongInt(-5)))
        );
        let text: Vec<_> = h.iter().collect();
        assert_eq!(text, [("a", "1"), ("a", "3")]);
    }

    #[test]
    fn insert_replaces_every_value_in_the_first_place() {
        let mut h = sample();
        h.insert("a", "x");
        let names: Vec<_> = h.iter_values().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "bin", "n"]);
        assert_eq!(h.get("a"), Some("x"));
        h.insert("new", "y");
        assert_eq!(h.iter_values().last().map(|(n, _)| n), Some("new"));
        assert!(h.remove("bin").is_some());
        assert!(!h.contains_key("bin"));
        assert_eq!(h.remove("bin"), None);
    }

    #[test]
    fn collects_text_like_a_map() {
        let h: Headers = [("k", "1"), ("k", "2"), ("j", "3")].into_iter().collect();
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("k"), Some("2"));
    }
}
