//! The orders a fault run publishes: mostly valid, 1 % invalid, 0.5 % poison.

use backstop::Message;

/// What an order is expected to come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Executed exactly once (one ledger row).
    Valid,
    /// A negative amount: dead-lettered as `permanent`.
    Invalid,
    /// Not an order at all: dead-lettered as `decode`.
    Poison,
}

impl Kind {
    /// The `x-backstop-error-kind` its dead letter carries, if it is dead-lettered.
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            Kind::Valid => None,
            Kind::Invalid => Some("permanent"),
            Kind::Poison => Some("decode"),
        }
    }
}

/// One order of a run.
#[derive(Clone, Debug)]
pub struct Order {
    /// Its unique message id.
    pub message_id: String,
    /// Its unique order id (the idempotency key; empty for poison).
    pub order_id: String,
    /// What it should come to.
    pub kind: Kind,
    /// The message to publish.
    pub message: Message,
}

/// The kind of order number `i`: every 100th invalid, every 200th (offset by 50) poison.
pub fn kind_of(i: usize) -> Kind {
    if i % 100 == 99 {
        Kind::Invalid
    } else if i % 200 == 49 {
        Kind::Poison
    } else {
        Kind::Valid
    }
}

/// `n` orders whose ids start with `run`; the key is the order id.
pub fn orders(run: &str, n: usize) -> Vec<Order> {
    (0..n)
        .map(|i| {
            let kind = kind_of(i);
            let message_id = format!("{run}-m{i}");
            let order_id = format!("{run}-o{i}");
            let body = match kind {
                Kind::Valid => format!(r#"{{"order_id":"{order_id}","amount":{}}}"#, i % 500 + 1),
                Kind::Invalid => format!(r#"{{"order_id":"{order_id}","amount":-{}}}"#, i % 7 + 1),
                Kind::Poison => match i % 3 {
                    0 => format!("not json {i}"),
                    1 => format!(r#"{{"order":"{order_id}"}}"#),
                    _ => format!(r#"{{"order_id":"{order_id}","amount":"lots"}}"#),
                },
            };
            Order {
                message_id: message_id.clone(),
                order_id: order_id.clone(),
                kind,
                message: Message::new(body)
                    .with_message_id(message_id)
                    .with_key(order_id),
            }
        })
        .collect()
}

/// `keys` × `per_key` valid orders whose ids start with `run`: order `i`
/// belongs to customer `k = i % keys` (its message key, `<run>-k<k>`) and
/// is that key's order number `s = i / keys` (its id, `<run>-k<k>-s<s>`,
/// zero-padded). The fault scenario publishes order `i` from lane `i % 8`,
/// one after the other, so with `keys` a multiple of 8 each key's orders
/// reach their partition in sequence.
pub fn keyed_orders(run: &str, keys: usize, per_key: usize) -> Vec<Order> {
    (0..keys * per_key)
        .map(|i| {
            let (k, s) = (i % keys, i / keys);
            let message_id = format!("{run}-m{i}");
            let order_id = format!("{run}-k{k}-s{s:04}");
            let body = format!(r#"{{"order_id":"{order_id}","amount":{}}}"#, i % 500 + 1);
            Order {
                message_id: message_id.clone(),
                order_id,
                kind: Kind::Valid,
                message: Message::new(body)
                    .with_message_id(message_id)
                    .with_key(format!("{run}-k{k}")),
            }
        })
        .collect()
}

/// The key and sequence number of an order of [`keyed_orders`].
pub fn key_and_sequence(order_id: &str) -> Option<(&str, usize)> {
    let (key, seq) = order_id.rsplit_once("-s")?;
    Some((key, seq.parse().ok()?))
}
