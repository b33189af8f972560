use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU64;

use backstop::Payload;

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(source = "orders", dlq = "orders.dlq")]
struct Order {
    #[payload(key)]
    id: String,
    #[allow(dead_code)]
    amount: f64,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Numbered(#[payload(key)] u64, #[allow(dead_code)] bool);

#[derive(Clone, serde::Deserialize, Payload)]
struct Boxed {
    #[payload(key)]
    id: Box<str>,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Borrowed {
    #[payload(key)]
    id: Cow<'static, str>,
}

#[derive(Clone, serde::Deserialize, Payload)]
#[payload(source = "letters")]
struct Letter {
    #[payload(key)]
    letter: char,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Counted {
    #[payload(key)]
    n: NonZeroU64,
}

#[derive(Clone, serde::Deserialize)]
struct Sku(String);

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sku-{}", self.0)
    }
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Restocked {
    #[payload(key, display)]
    sku: Sku,
}

#[derive(Clone, serde::Deserialize, Payload)]
#[serde(tag = "type")]
#[payload(dlq = "events.dlq")]
enum Event {
    Created { #[allow(dead_code)] id: u32 },
    Deleted,
}

#[derive(Clone, serde::Deserialize, Payload)]
struct Wrapper<T>
where
    T: Clone + Send + Sync + 'static,
{
    #[payload(key)]
    id: String,
    #[allow(dead_code)]
    inner: T,
}

fn main() {
    let order = Order::decode(br#"{"id":"o-1","amount":2.5}"#).unwrap();
    assert_eq!(order.key().as_deref(), Some("o-1"));
    assert_eq!(Order::default_source(), Some("orders"));
    assert_eq!(Order::default_dlq(), Some("orders.dlq"));
    assert!(Order::decode(b"{}").is_err());

    assert_eq!(Numbered::decode(b"[7, true]").unwrap().key().as_deref(), Some("7"));
    assert_eq!(Numbered::default_source(), None);
    assert_eq!(Boxed::decode(br#"{"id":"b"}"#).unwrap().key().as_deref(), Some("b"));
    assert_eq!(Borrowed::decode(br#"{"id":"c"}"#).unwrap().key().as_deref(), Some("c"));
    assert_eq!(Letter::decode(br#"{"letter":"x"}"#).unwrap().key().as_deref(), Some("x"));
    assert_eq!(Letter::default_source(), Some("letters"));
    assert_eq!(Counted::decode(br#"{"n":3}"#).unwrap().key().as_deref(), Some("3"));
    assert!(Counted::decode(br#"{"n":0}"#).is_err());
    assert_eq!(Restocked::decode(br#"{"sku":"9"}"#).unwrap().key().as_deref(), Some("sku-9"));

    let event = Event::decode(br#"{"type":"Deleted"}"#).unwrap();
    assert!(matches!(event, Event::Deleted));
    assert_eq!(event.key(), None);
    assert_eq!(Event::default_dlq(), Some("events.dlq"));

    let wrapped = Wrapper::<u8>::decode(br#"{"id":"w","inner":1}"#).unwrap();
    assert_eq!(wrapped.key().as_deref(), Some("w"));
}
