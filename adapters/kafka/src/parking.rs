//! Retries that keep per-key order ([`KafkaConfig::ordered_retries`](crate::KafkaConfig::ordered_retries)):
//! the records of the parked topic and what a partition's owner knows of
//! its parked keys.
//!
//! When a message K@n of main partition `p` goes to a retry tier, K is
//! *parked* on `p`: the later messages of K on `p` do not run; each is
//! copied to the parked topic (`<topic>.<group>.parked`, compacted, as many
//! partitions as the main topic) at partition `p`, in the transaction that
//! commits its main offset, so the main watermark moves and other keys keep
//! flowing. The owner of `p` reads its parked partition back (a *lane*)
//! and runs those copies in their original order once K@n *ended*: handled
//! or dead-lettered in whatever tier and by whatever member, which writes
//! an `ended` record to parked `p` in its own transaction. A copy that goes
//! to a retry tier itself becomes K's next head.
//!
//! The parked partition is the durable state: a new owner of `p` (after a
//! restart, a rebalance, or an aborted transaction) folds it to its latest
//! record per key before it hands out any keyed message of `p`. It knows it
//! read everything its predecessors committed when it reads a marker of
//! its own, written by its first transaction (under `read_committed` the
//! end of a partition stops at the oldest open transaction, which may be
//! anyone's).
//!
//! Records (every one is addressed to its main partition `p`):
//!
//! | key | value |
//! |---|---|
//! | `h:`K | `head <n>`: K waits for its head, main offset `n`; `ended <n>`: that head ended; a tombstone: K is not parked |
//! | `f:<o>:`K | a parked copy of K@`o`; a tombstone once it ran |
//! | `m:<token>` | a tombstone: a load marker |

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use backstop::{Message, copy};
use bytes::Bytes;

use crate::transaction::Record;

/// The parked topic of `topic` for `group`: `<topic>.<group>.parked`.
pub fn parked_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.parked")
}

const HEAD: &[u8] = b"h:";
const FOLLOWER: &[u8] = b"f:";
const MARKER: &[u8] = b"m:";
/// Digits of an offset in a follower's record key: keys sort by offset.
const OFFSET_DIGITS: usize = 20;

/// One record of a parked partition, decoded.
#[derive(Debug)]
pub(crate) enum Parked {
    /// K waits for its head, main offset `offset`.
    Head { key: Bytes, offset: i64 },
    /// K's head at main offset `offset` ended (handled or dead-lettered).
    Ended { key: Bytes, offset: i64 },
    /// K is not parked any more.
    Cleared { key: Bytes },
    /// A parked copy of K at main offset `offset`, with K as its key again.
    Follower {
        key: Bytes,
        offset: i64,
        message: Box<Message>,
    },
    /// The copy of K at main offset `offset` ran.
    Released { key: Bytes, offset: i64 },
    /// A load marker.
    Marker(String),
}

impl Parked {
    /// Decodes a record of the parked topic: its key, its value (`None`: a
    /// tombstone), and the message it holds. A record backstop did not
    /// write this way is `None` (logged by the caller, skipped).
    pub(crate) fn decode(key: &[u8], value: Option<&[u8]>, message: Message) -> Option<Parked> {
        if let Some(rest) = key.strip_prefix(MARKER) {
            return Some(Parked::Marker(String::from_utf8_lossy(rest).into_owned()));
        }
        if let Some(k) = key.strip_prefix(HEAD) {
            let key = Bytes::copy_from_slice(k);
            let Some(value) = value else {
                return Some(Parked::Cleared { key });
            };
            let text = std::str::from_utf8(value).ok()?;
            let (word, offset) = text.split_once(' ')?;
            let offset = offset.parse().ok()?;
            return match word {
                "head" => Some(Parked::Head { key, offset }),
                "ended" => Some(Parked::Ended { key, offset }),
                _ => None,
            };
        }
        let rest = key.strip_prefix(FOLLOWER)?;
        let digits = rest.get(..OFFSET_DIGITS)?;
        let offset = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let k = rest.get(OFFSET_DIGITS..)?.strip_prefix(b":")?;
        let key = Bytes::copy_from_slice(k);
        if value.is_none() {
            return Some(Parked::Released { key, offset });
        }
        let mut message = message;
        message.key = Some(key.clone());
        Some(Parked::Follower {
            key,
            offset,
            message: Box::new(message),
        })
    }
}

/// Where the parked records of one main partition go.
#[derive(Clone, Debug)]
pub(crate) struct ParkedPartition {
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

impl ParkedPartition {
    fn record(&self, key: Vec<u8>, value: Option<String>) -> Record {
        let tombstone = value.is_none();
        let message = Message::new(value.unwrap_or_default()).with_key(Bytes::from(key));
        Record {
            destination: self.topic.clone(),
            partition: Some(self.partition),
            message,
            tombstone,
        }
    }

    /// `h:K = head <offset>`.
    pub(crate) fn head(&self, key: &[u8], offset: i64) -> Record {
        self.record([HEAD, key].concat(), Some(format!("head {offset}")))
    }

    /// `h:K = ended <offset>`.
    pub(crate) fn ended(&self, key: &[u8], offset: i64) -> Record {
        self.record([HEAD, key].concat(), Some(format!("ended {offset}")))
    }

    /// `h:K` deleted.
    pub(crate) fn cleared(&self, key: &[u8]) -> Record {
        self.record([HEAD, key].concat(), None)
    }

    fn follower_key(key: &[u8], offset: i64) -> Vec<u8> {
        let digits = format!("{offset:0OFFSET_DIGITS$}");
        [FOLLOWER, digits.as_bytes(), b":", key].concat()
    }

    /// The parked copy of `message` (key K, main offset `offset`): its
    /// headers, with its origin stamped, under `f:<offset>:K`.
    pub(crate) fn follower(&self, message: &Message, key: &[u8], offset: i64) -> Record {
        let mut parked = copy::postponed(message, SystemTime::now());
        parked.key = Some(Bytes::from(Self::follower_key(key, offset)));
        Record {
            destination: self.topic.clone(),
            partition: Some(self.partition),
            message: parked,
            tombstone: false,
        }
    }

    /// `f:<offset>:K` deleted.
    pub(crate) fn released(&self, key: &[u8], offset: i64) -> Record {
        self.record(Self::follower_key(key, offset), None)
    }

    /// The load marker `m:<token>`.
    pub(crate) fn marker(&self, token: &str) -> Record {
        self.record([MARKER, token.as_bytes()].concat(), None)
    }
}

/// What the owner of a main partition knows of one parked key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyPark {
    /// The main offset of the key's message in a retry tier, if one is.
    pub(crate) head: Option<i64>,
    /// Copies parked (written or in a transaction) and not yet run.
    pub(crate) followers: usize,
}

impl KeyPark {
    /// True while later messages of the key must wait.
    pub(crate) fn is_parked(&self) -> bool {
        self.head.is_some() || self.followers > 0
    }
}

/// A parked copy read back, for the lane.
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) key: Bytes,
    /// Its main offset.
    pub(crate) offset: i64,
    /// Its offset in the parked partition.
    pub(crate) at: i64,
    pub(crate) message: Message,
}

/// A partition being loaded: its parked records folded to the latest per
/// key, until its own marker is read.
#[derive(Debug)]
pub(crate) struct Loading {
    pub(crate) token: String,
    /// When the marker was last queued (queued again after a while: an
    /// aborted transaction drops it).
    pub(crate) marked_at: Instant,
    heads: HashMap<Bytes, Option<i64>>,
    followers: BTreeMap<(i64, Bytes), Follower>,
    /// Main offsets ready while loading, routed once loaded.
    pub(crate) waiting: Vec<i64>,
}

/// The loaded state of a parked partition.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) keys: HashMap<Bytes, KeyPark>,
    /// Parked copies still to run, in parked-partition order.
    pub(crate) followers: Vec<Follower>,
    /// Keys whose head ended with nothing behind it: cleared.
    pub(crate) clear: Vec<Bytes>,
}

impl Loading {
    pub(crate) fn new(token: String) -> Self {
        Loading {
            token,
            marked_at: Instant::now(),
            heads: HashMap::new(),
            followers: BTreeMap::new(),
            waiting: Vec::new(),
        }
    }

    /// Folds one record read before the marker (`at`: its offset in the
    /// parked partition).
    pub(crate) fn fold(&mut self, record: Parked, at: i64) {
        match record {
            Parked::Head { key, offset } => {
                self.heads.insert(key, Some(offset));
            }
            Parked::Ended { key, .. } => {
                self.heads.insert(key, None);
            }
            Parked::Cleared { key } => {
                self.heads.remove(&key);
            }
            Parked::Follower {
                key,
                offset,
                message,
            } => {
                let follower = Follower {
                    key: key.clone(),
                    offset,
                    at,
                    message: *message,
                };
                self.followers.insert((offset, key), follower);
            }
            Parked::Released { key, offset } => {
                self.followers.remove(&(offset, key));
            }
            Parked::Marker(_) => {}
        }
    }

    /// What was folded: each key's head and parked copies.
    pub(crate) fn finish(self) -> Loaded {
        let mut loaded = Loaded::default();
        for (key, head) in &self.heads {
            loaded.keys.insert(
                key.clone(),
                KeyPark {
                    head: *head,
                    followers: 0,
                },
            );
        }
        let mut followers: Vec<Follower> = self.followers.into_values().collect();
        followers.sort_by_key(|f| f.at);
        for f in &followers {
            loaded.keys.entry(f.key.clone()).or_default().followers += 1;
        }
        loaded.followers = followers;
        loaded.keys.retain(|key, park| {
            if park.is_parked() {
                return true;
            }
            loaded.clear.push(key.clone());
            false
        });
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> ParkedPartition {
        ParkedPartition {
            topic: "orders.g.parked".into(),
            partition: 3,
        }
    }

    fn decode(record: &Record) -> Parked {
        let key = record.message.key.clone().expect("keyed");
        let value = (!record.tombstone).then_some(&record.message.payload[..]);
        Parked::decode(&key, value, record.message.clone()).expect("a parked record")
    }

    #[test]
    fn records_read_back_as_written() {
        let p = parked();
        assert!(
            matches!(decode(&p.head(b"k:1", 42)), Parked::Head { key, offset: 42 } if &key[..] == b"k:1")
        );
        assert!(matches!(
            decode(&p.ended(b"k", 7)),
            Parked::Ended { offset: 7, .. }
        ));
        assert!(matches!(decode(&p.cleared(b"k")), Parked::Cleared { .. }));
        assert!(matches!(
            decode(&p.released(b"k", 9)),
            Parked::Released { offset: 9, .. }
        ));
        assert!(matches!(decode(&p.marker("t-1")), Parked::Marker(t) if t == "t-1"));
        let mut m = Message::new("body").with_key("k:1".to_owned());
        m.meta.offset = Some(12);
        m.meta.partition = Some(3);
        m.meta.source = "orders".into();
        let record = p.follower(&m, b"k:1", 12);
        assert_eq!(record.partition, Some(3));
        match decode(&record) {
            Parked::Follower {
                key,
                offset,
                message,
            } => {
                assert_eq!(&key[..], b"k:1");
                assert_eq!(offset, 12);
                assert_eq!(message.key.as_deref(), Some(&b"k:1"[..]));
                assert_eq!(&message.payload[..], b"body");
                assert_eq!(message.header(backstop::wire::ORIGINAL_OFFSET), Some("12"));
            }
            other => panic!("not a follower: {other:?}"),
        }
        assert!(Parked::decode(b"x:1", Some(b"head 1"), Message::new("")).is_none());
        assert!(Parked::decode(b"h:k", Some(b"head x"), Message::new("")).is_none());
        assert!(Parked::decode(b"f:12:k", Some(b"v"), Message::new("")).is_none());
    }

    #[test]
    fn a_fold_keeps_the_latest_record_per_key() {
        let p = parked();
        let mut loading = Loading::new("t".into());
        let m = |o: i64| {
            let mut m = Message::new(o.to_string());
            m.meta.offset = Some(o);
            m
        };
        let records = [
            p.head(b"a", 1),
            p.follower(&m(2), b"a", 2),
            p.follower(&m(3), b"a", 3),
            p.head(b"b", 4),
            p.ended(b"a", 1),
            p.released(b"a", 2),
            // b's head ended with nothing behind it: b is cleared.
            p.ended(b"b", 4),
            p.head(b"c", 5),
            p.head(b"d", 6),
            p.cleared(b"d"),
        ];
        for (at, record) in records.iter().enumerate() {
            loading.fold(decode(record), at as i64);
        }
        let loaded = loading.finish();
        assert_eq!(
            loaded.keys.get(&Bytes::from_static(b"a")),
            Some(&KeyPark {
                head: None,
                followers: 1
            })
        );
        assert_eq!(
            loaded.keys.get(&Bytes::from_static(b"c")),
            Some(&KeyPark {
                head: Some(5),
                followers: 0
            })
        );
        assert_eq!(loaded.keys.len(), 2);
        assert_eq!(loaded.clear, vec![Bytes::from_static(b"b")]);
        let left: Vec<i64> = loaded.followers.iter().map(|f| f.offset).collect();
        assert_eq!(left, [3]);
    }
}
