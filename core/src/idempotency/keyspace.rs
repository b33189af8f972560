//! [`Keyspace`]: whose keys these are — the source, its group, the service.

use std::borrow::Cow;
use std::fmt;

use super::Key;
use crate::message::Meta;

/// The part of every stored idempotency key that names the consumer: the
/// source (RabbitMQ queue, Kafka topic), the Kafka consumer group, and an
/// optional service name the user adds. Two consumers of one shared store
/// therefore never see each other's keys, even when their messages carry
/// the same business key or message id.
///
/// Written `[<service>@]<source>[#<group>]`, each part with `%`, `:`, `@`
/// and `#` percent-escaped, so different parts never meet; a stored key is
/// `<keyspace>:<key>` ([`Keyspace::key`]). The source is [`Meta::origin`]:
/// retry copies (a Kafka retry topic, a RabbitMQ delay queue) and redrives
/// from the DLQ keep the keyspace of the message they copy. A service name
/// is only ever added: it tells apart two services that consume one queue
/// under one name, it never replaces the source.
///
/// ```
/// use backstop::idempotency::{Key, Keyspace};
///
/// let billing = Keyspace::new("orders", None, Some("billing"));
/// assert_eq!(billing.key(&Key::new("o-42")).as_str(), "billing@orders:o-42");
/// let kafka = Keyspace::new("orders", Some("shipping"), None);
/// assert_eq!(kafka.as_str(), "orders#shipping");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keyspace(String);

impl Keyspace {
    /// The keyspace of `source` (queue or topic), consumed by `group` (Kafka),
    /// for `service` (a name the user adds, if any).
    pub fn new(source: &str, group: Option<&str>, service: Option<&str>) -> Self {
        let mut text = String::with_capacity(source.len() + 16);
        write(&mut text, source, group, service);
        Keyspace(text)
    }

    /// `raw` in the keyspace of a delivery (as `Keyspace::of(meta,
    /// service).key(&Key::new(raw))`), written without building the keyspace:
    /// one allocation per message, the key's own.
    pub(crate) fn key_of(meta: &Meta, service: Option<&str>, raw: &str) -> Key {
        thread_local! {
            static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        // As `Keyspace::key` does: a long raw key is hashed first.
        let hashed;
        let raw = if raw.len() > super::key::MAX_KEY_LEN {
            hashed = Key::new(raw);
            hashed.as_str()
        } else {
            raw
        };
        TEXT.with_borrow_mut(|text| {
            text.clear();
            write(text, meta.origin(), meta.group.as_deref(), service);
            text.push(':');
            text.push_str(raw);
            let key = Key::new(text);
            if text.capacity() > 4096 {
                *text = String::new(); // a rare huge key does not stay resident
            }
            key
        })
    }

    /// The keyspace of a delivery: its [`Meta::origin`] and [`Meta::group`],
    /// with `service` added.
    pub fn of(meta: &Meta, service: Option<&str>) -> Self {
        Keyspace::new(meta.origin(), meta.group.as_deref(), service)
    }

    /// The keyspace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `key` in this keyspace: `<keyspace>:<key>` (hashed by [`Key::new`] when long).
    pub fn key(&self, key: &Key) -> Key {
        Key::new(&format!("{}:{}", self.0, key.as_str()))
    }
}

impl fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes the keyspace `[<service>@]<source>[#<group>]` into `text`.
fn write(text: &mut String, source: &str, group: Option<&str>, service: Option<&str>) {
    if let Some(service) = service.filter(|s| !s.is_empty()) {
        text.push_str(&escape(service));
        text.push('@');
    }
    text.push_str(&escape(source));
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        text.push('#');
        text.push_str(&escape(group));
    }
}

/// `part` with `%`, `:`, `@` and `#` percent-escaped (unchanged when it has none).
fn escape(part: &str) -> Cow<'_, str> {
    // A byte scan (the four are ASCII, never inside a multi-byte char):
    // every message's key passes its source's name through here.
    if !part.bytes().any(|b| matches!(b, b'%' | b':' | b'@' | b'#')) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 6);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_in_place_equals_the_keyspace_key() {
        let mut meta = crate::message::Message::new("{}").meta;
        meta.source = "or:ders".into();
        meta.group = Some("g#1".into());
        for service in [None, Some("bill@ing")] {
            let expected = Keyspace::of(&meta, service).key(&Key::new("o-42"));
            assert_eq!(Keyspace::key_of(&meta, service, "o-42"), expected);
        }
        let long = "k".repeat(5000);
        assert_eq!(
            Keyspace::key_of(&meta, None, &long),
            Keyspace::of(&meta, None).key(&Key::new(&long)),
            "long keys are hashed the same way"
        );
    }

    #[test]
    fn the_source_is_always_there_and_a_service_is_added() {
        assert_eq!(Keyspace::new("orders", None, None).as_str(), "orders");
        assert_eq!(
            Keyspace::new("orders", Some("g"), Some("billing")).as_str(),
            "billing@orders#g"
        );
        assert_ne!(
            Keyspace::new("orders", None, Some("billing")),
            Keyspace::new("payments", None, Some("billing")),
            "one service on two queues: two keyspaces"
        );
        assert_ne!(
            Keyspace::new("orders", Some("billing"), None),
            Keyspace::new("orders", Some("shipping"), None),
            "two groups on one topic: two keyspaces"
        );
    }

    #[test]
    fn parts_cannot_collide() {
        let pairs = [
            (
                Keyspace::new("a#b", None, None),
                Keyspace::new("a", Some("b"), None),
            ),
            (
                Keyspace::new("a@b", None, None),
                Keyspace::new("b", None, Some("a")),
            ),
            (
                Keyspace::new("a:b", None, None),
                Keyspace::new("a%3Ab", None, None),
            ),
        ];
        for (x, y) in pairs {
            assert_ne!(x, y);
        }
        let k = Key::new("c");
        assert_ne!(
            Keyspace::new("a:b", None, None).key(&k),
            Keyspace::new("a", None, None).key(&Key::new("b:c"))
        );
    }

    #[test]
    fn retry_copies_keep_the_keyspace_of_their_source() {
        let mut meta = Meta {
            source: "orders.g.retry.5s".into(),
            retry_of: Some("orders".into()),
            group: Some("g".into()),
            ..Meta::default()
        };
        let copy = Keyspace::of(&meta, None);
        meta.source = "orders".into();
        meta.retry_of = None;
        assert_eq!(copy, Keyspace::of(&meta, None));
        assert_eq!(copy.as_str(), "orders#g");
    }
}
