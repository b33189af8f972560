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
//! | key | value | written by |
//! |---|---|---|
//! | `h:`K | `head <n>`: K waits for its head, main offset `n`; a tombstone: no head | the owner of `p` |
//! | `e:<n>:`K | `ended`: K's head at main offset `n` ended; a tombstone once the owner took note | the member that ended it; the owner |
//! | `f:<o>:`K | a parked copy of K@`o`; a tombstone once it ran | the owner of `p` |
//! | `m:<token>` | a tombstone: a load marker | the owner of `p` |
//!
//! Only the owner writes `h:` keys, in its own order, so a late `ended` of
//! another member can never overwrite a newer head: a head is over only
//! when an `e:` record names its offset. A copy's records (`released`,
//! `head`) commit as soon as it ran, not behind the copies of other keys
//! still waiting in the lane, and a transaction writes its records in the
//! order they were made (the parked topic sees "K unparked" before a newer
//! "K parked" of the main partition).

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use backstop::{Message, copy};
use bytes::Bytes;

use crate::transaction::Record;

const HEAD: &[u8] = b"h:";
const ENDED: &[u8] = b"e:";
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
    /// The owner took note that K's head at `offset` ended.
    EndedCleared { key: Bytes, offset: i64 },
    /// K has no head any more.
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
            let offset = text.strip_prefix("head ")?.parse().ok()?;
            return Some(Parked::Head { key, offset });
        }
        if let Some(rest) = key.strip_prefix(ENDED) {
            let (offset, key) = offset_and_key(rest)?;
            return Some(match value {
                Some(_) => Parked::Ended { key, offset },
                None => Parked::EndedCleared { key, offset },
            });
        }
        let (offset, key) = offset_and_key(key.strip_prefix(FOLLOWER)?)?;
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

/// `<offset:020>:<key>`, the rest of an `e:` or `f:` record key.
fn offset_and_key(rest: &[u8]) -> Option<(i64, Bytes)> {
    let digits = rest.get(..OFFSET_DIGITS)?;
    let offset = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let k = rest.get(OFFSET_DIGITS..)?.strip_prefix(b":")?;
    Some((offset, Bytes::copy_from_slice(k)))
}

/// `<prefix><offset:020>:<key>`.
fn offset_key(prefix: &[u8], key: &[u8], offset: i64) -> Vec<u8> {
    let digits = format!("{offset:0OFFSET_DIGITS$}");
    [prefix, digits.as_bytes(), b":", key].concat()
}

/// Where the parked records of one main partition go.
#[derive(Clone, Debug)]
pub(crate) struct ParkedPartition {
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

impl ParkedPartition {
    /// A record to this partition; `optional`: see [`Record::optional`].
    fn record(&self, key: Vec<u8>, value: Option<String>, optional: bool) -> Record {
        let tombstone = value.is_none();
        let message = Message::new(value.unwrap_or_default()).with_key(Bytes::from(key));
        let mut record = Record::to(self.topic.clone(), message);
        record.partition = Some(self.partition);
        record.tombstone = tombstone;
        record.optional = optional;
        record
    }

    /// `h:K = head <offset>`.
    pub(crate) fn head(&self, key: &[u8], offset: i64) -> Record {
        self.record([HEAD, key].concat(), Some(format!("head {offset}")), false)
    }

    /// `h:K` deleted: K has no head.
    pub(crate) fn cleared(&self, key: &[u8]) -> Record {
        self.record([HEAD, key].concat(), None, true)
    }

    /// `e:<offset>:K = ended`, written by the member that ended the head
    /// (dropped, logged, if the partition does not exist: only a record
    /// not written by backstop can name one).
    pub(crate) fn ended(&self, key: &[u8], offset: i64) -> Record {
        self.record(offset_key(ENDED, key, offset), Some("ended".into()), true)
    }

    /// `e:<offset>:K` deleted.
    pub(crate) fn ended_cleared(&self, key: &[u8], offset: i64) -> Record {
        self.record(offset_key(ENDED, key, offset), None, true)
    }

    /// The parked copy of `message` (key K, main offset `offset`): its
    /// headers, with its origin stamped, under `f:<offset>:K`.
    pub(crate) fn follower(&self, message: &Message, key: &[u8], offset: i64) -> Record {
        let mut parked = copy::postponed(message, SystemTime::now());
        parked.key = Some(Bytes::from(offset_key(FOLLOWER, key, offset)));
        let mut record = Record::to(self.topic.clone(), parked);
        record.partition = Some(self.partition);
        record
    }

    /// `f:<offset>:K` deleted: the copy ran.
    pub(crate) fn released(&self, key: &[u8], offset: i64) -> Record {
        self.record(offset_key(FOLLOWER, key, offset), None, false)
    }

    /// The load marker `m:<token>`.
    pub(crate) fn marker(&self, token: &str) -> Record {
        self.record([MARKER, token.as_bytes()].concat(), None, true)
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
    heads: HashMap<Bytes, i64>,
    ended: BTreeMap<(i64, Bytes), ()>,
    followers: BTreeMap<(i64, Bytes), Follower>,
    /// Main offsets ready while loading, routed once loaded.
    pub(crate) waiting: Vec<i64>,
}

/// The loaded state of a parked partition.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) keys: HashMap<Bytes, KeyPark, foldhash::fast::RandomState>,
    /// Parked copies still to run, in parked-partition order.
    pub(crate) followers: Vec<Follower>,
    /// Heads that ended: their `h:` record is deleted.
    pub(crate) ended_heads: Vec<Bytes>,
    /// `e:` records to delete (their head ended, or was never this one).
    pub(crate) ends: Vec<(Bytes, i64)>,
}

impl Loading {
    pub(crate) fn new(token: String) -> Self {
        Loading {
            token,
            marked_at: Instant::now(),
            heads: HashMap::new(),
            ended: BTreeMap::new(),
            followers: BTreeMap::new(),
            waiting: Vec::new(),
        }
    }

    /// Folds one record read before the marker (`at`: its offset in the
    /// parked partition).
    pub(crate) fn fold(&mut self, record: Parked, at: i64) {
        match record {
            Parked::Head { key, offset } => {
                self.heads.insert(key, offset);
            }
            Parked::Cleared { key } => {
                self.heads.remove(&key);
            }
            Parked::Ended { key, offset } => {
                self.ended.insert((offset, key), ());
            }
            Parked::EndedCleared { key, offset } => {
                self.ended.remove(&(offset, key));
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
        for (key, &head) in &self.heads {
            if self.ended.contains_key(&(head, key.clone())) {
                loaded.ended_heads.push(key.clone());
                continue;
            }
            loaded.keys.insert(
                key.clone(),
                KeyPark {
                    head: Some(head),
                    followers: 0,
                },
            );
        }
        loaded.ends = self.ended.into_keys().map(|(o, k)| (k, o)).collect();
        let mut followers: Vec<Follower> = self.followers.into_values().collect();
        followers.sort_by_key(|f| f.at);
        for f in &followers {
            loaded.keys.entry(f.key.clone()).or_default().followers += 1;
        }
        loaded.followers = followers;
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
        assert!(Parked::decode(b"h:k", Some(b"ended 1"), Message::new("")).is_none());
        assert!(matches!(
            decode(&p.ended_cleared(b"k", 7)),
            Parked::EndedCleared { offset: 7, .. }
        ));
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
            // A late `ended` of an older head of c: c's head 5 is live.
            p.ended(b"c", 3),
            p.head(b"d", 6),
            p.cleared(b"d"),
            p.ended(b"e", 9),
            p.ended_cleared(b"e", 9),
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
        let mut ended = loaded.ended_heads.clone();
        ended.sort();
        assert_eq!(ended, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        let ends: Vec<(&[u8], i64)> = loaded.ends.iter().map(|(k, o)| (&k[..], *o)).collect();
        assert_eq!(ends, [(&b"a"[..], 1), (b"c", 3), (b"b", 4)]);
        let left: Vec<i64> = loaded.followers.iter().map(|f| f.offset).collect();
        assert_eq!(left, [3]);
    }
}
