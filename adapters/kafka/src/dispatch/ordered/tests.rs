//! Unit tests of ordered retries in the dispatcher.

use std::sync::Arc;

use backstop::Message;
use backstop::transaction::Transaction;

use super::*;
use crate::dispatch::{Settlement, ToCommit};
use crate::parking::Parked;
use crate::transaction::{DeliverySlot, Pending};

const RETRY: &str = "t.g.retry.5s";

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

fn msg(offset: i64, key: &str) -> Message {
    let mut m = Message::new(format!("{key}{offset}")).with_key(key.to_owned());
    m.meta.offset = Some(offset);
    m.meta.partition = Some(0);
    m.meta.source = "t".into();
    m
}

fn parked() -> ParkedPartition {
    ParkedPartition {
        topic: "t.g.parked".into(),
        partition: 0,
    }
}

/// `record` as the parked topic's reader decodes it.
fn decode(record: Record) -> Parked {
    let key = record.message.key.clone().unwrap_or_default();
    let value = (!record.tombstone).then(|| record.message.payload.clone());
    Parked::decode(&key, value.as_deref(), record.message).expect("a parked record")
}

/// An ordered dispatcher over partition 0 of `t`, assigned, not loaded.
fn assigned() -> (Arc<Dispatcher>, Arc<Pending>, Lane) {
    let d = Dispatcher::new(10, 100, usize::MAX);
    let pending = Arc::new(Pending::default());
    d.transactional(Arc::clone(&pending));
    d.ordered(Ordered::new("g", ["t".to_owned()], [RETRY.to_owned()]));
    d.assign([(tp(), false)]);
    let lanes = d.lanes();
    assert_eq!(lanes.len(), 1);
    assert_eq!(&*lanes[0].tp.topic, "t.g.parked");
    (d, pending, lanes[0].clone())
}

/// [`assigned`], and loaded (its marker read back).
fn loaded() -> (Arc<Dispatcher>, Arc<Pending>, Lane) {
    let (d, pending, lane) = assigned();
    let read = written(&pending, &ToCommit::default());
    assert_eq!(read.len(), 1, "the load marker");
    d.lane_read(&lane, read.into_iter().map(|(_, p)| (0, p)).collect());
    (d, pending, lane)
}

/// The parked-topic records a transaction over `commit` writes, in
/// order, decoded.
fn written(pending: &Pending, commit: &ToCommit) -> Vec<(Option<i32>, Parked)> {
    pending
        .take_covered(&commit.offsets, &commit.lanes)
        .records
        .into_iter()
        .filter(|r| r.destination == "t.g.parked")
        .map(|r| (r.partition, decode(r)))
        .collect()
}

/// Short names of `records`.
fn names(records: &[(Option<i32>, Parked)]) -> Vec<String> {
    records
        .iter()
        .map(|(_, r)| match r {
            Parked::Head { key, offset } => format!("head {}@{offset}", key_of(key)),
            Parked::Follower { key, offset, .. } => format!("copy {}@{offset}", key_of(key)),
            Parked::Released { key, offset } => format!("released {}@{offset}", key_of(key)),
            Parked::Cleared { key } => format!("cleared {}", key_of(key)),
            Parked::Ended { key, offset } => format!("ended {}@{offset}", key_of(key)),
            Parked::EndedCleared { key, offset } => {
                format!("ended-cleared {}@{offset}", key_of(key))
            }
            Parked::Marker(_) => "marker".to_owned(),
        })
        .collect()
}

fn key_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn slot(pending: &Arc<Pending>, ticket: &Ticket) -> DeliverySlot {
    DeliverySlot {
        pending: Arc::clone(pending),
        tp: ticket.tp.clone(),
        generation: ticket.generation,
        offset: ticket.offset,
    }
}

/// Takes and settles (done) whatever is ready.
fn taken(d: &Dispatcher) -> Vec<(TopicPartition, i64)> {
    let mut out = Vec::new();
    while let Some(t) = d.take().ready() {
        out.push((t.ticket.tp.clone(), t.ticket.offset));
        d.settle(&t.ticket, Settlement::Done).unwrap();
    }
    out
}

/// Takes the next delivery, expecting it to be at `offset` of `tp`.
fn next(d: &Dispatcher, tp: &TopicPartition, offset: i64) -> super::super::Taken {
    let t = d.take().ready().expect("a delivery");
    assert_eq!((&t.ticket.tp, t.ticket.offset), (tp, offset));
    t
}

/// Defers `k@0` to a tier; returns the parked-topic records written.
fn park_k(d: &Dispatcher, pending: &Arc<Pending>) {
    let k0 = next(d, &tp(), 0);
    slot(pending, &k0.ticket)
        .produce(RETRY, msg(0, "k"))
        .unwrap();
    d.settle(&k0.ticket, Settlement::Done).unwrap();
}

#[test]
fn a_deferred_key_parks_its_followers_and_releases_them_in_order_when_its_head_ended() {
    let (d, pending, lane) = loaded();
    for (o, k) in [(0, "k"), (1, "j"), (2, "k"), (3, "k"), (4, "j")] {
        d.receive(tp(), msg(o, k), None, false);
    }
    park_k(&d, &pending);
    // k@2 and k@3 were parked, not handed out; j runs on.
    let handed: Vec<i64> = taken(&d).into_iter().map(|(_, o)| o).collect();
    assert_eq!(handed, [1, 4]);
    let commit = d.take_to_commit();
    assert_eq!(
        commit.offsets,
        vec![(tp(), 5)],
        "the watermark passed the parked ones"
    );
    let records = written(&pending, &commit);
    assert!(records.iter().all(|(p, _)| *p == Some(0)));
    assert_eq!(names(&records), ["head k@0", "copy k@2", "copy k@3"]);
    let copies: Vec<(i64, Parked)> = records
        .into_iter()
        .skip(1)
        .zip([10, 11])
        .map(|((_, r), at)| (at, r))
        .collect();
    d.lane_read(&lane, copies);
    assert!(taken(&d).is_empty(), "the copies wait for their head");
    // A later k on the main partition is parked too, behind them.
    d.receive(tp(), msg(5, "k"), None, false);
    assert!(taken(&d).is_empty());
    // An `ended` of another head of k changes nothing (and is deleted).
    d.lane_read(&lane, vec![(12, decode(parked().ended(b"k", 7)))]);
    assert!(taken(&d).is_empty());
    d.lane_read(&lane, vec![(13, decode(parked().ended(b"k", 0)))]);
    let lane_tp = lane.tp.clone();
    let first = next(&d, &lane_tp, 10);
    assert_eq!(first.message.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(
        first.message.meta.retry_of.as_deref(),
        None,
        "set by the reader"
    );
    assert!(d.take().ready().is_none(), "one at a time, in order");
    d.settle(&first.ticket, Settlement::Done).unwrap();
    let second = next(&d, &lane_tp, 11);
    // This copy goes to a tier in turn: it is k's new head.
    slot(&pending, &second.ticket)
        .produce(RETRY, msg(3, "k"))
        .unwrap();
    d.settle(&second.ticket, Settlement::Done).unwrap();
    let commit = d.take_to_commit();
    assert_eq!(commit.lanes, vec![(lane_tp, vec![10, 11])]);
    assert_eq!(
        names(&written(&pending, &commit)),
        [
            "copy k@5",
            "ended-cleared k@7",
            "cleared k",
            "ended-cleared k@0",
            "released k@2",
            "released k@3",
            "head k@3",
        ],
        "k@5 parked, the stale ended deleted, k@0's end noted, k@2 ran, k@3 went on to a tier"
    );
}

#[test]
fn a_copy_that_ran_is_committed_at_once_not_behind_a_waiting_one_and_before_what_follows_it() {
    let (d, pending, lane) = loaded();
    for (o, k) in [(0, "k"), (1, "j"), (2, "k"), (3, "j")] {
        d.receive(tp(), msg(o, k), None, false);
    }
    park_k(&d, &pending);
    let j1 = next(&d, &tp(), 1);
    slot(&pending, &j1.ticket)
        .produce(RETRY, msg(1, "j"))
        .unwrap();
    d.settle(&j1.ticket, Settlement::Done).unwrap();
    let commit = d.take_to_commit();
    assert_eq!(
        names(&written(&pending, &commit)),
        ["head k@0", "copy k@2", "head j@1", "copy j@3"],
        "in the order they were made"
    );
    // Lane: k's copy first (held: k@0 is still in its tier), then j's.
    d.lane_read(
        &lane,
        vec![
            (20, decode(parked().follower(&msg(2, "k"), b"k", 2))),
            (21, decode(parked().follower(&msg(3, "j"), b"j", 3))),
            (22, decode(parked().ended(b"j", 1))),
        ],
    );
    let j3 = next(&d, &lane.tp, 21);
    d.settle(&j3.ticket, Settlement::Done).unwrap();
    // j runs normally again: its next message is not parked.
    d.receive(tp(), msg(4, "j"), None, false);
    let j4 = next(&d, &tp(), 4);
    slot(&pending, &j4.ticket)
        .produce("out", msg(4, "j"))
        .unwrap();
    d.settle(&j4.ticket, Settlement::Done).unwrap();
    let commit = d.take_to_commit();
    // j's records are not held behind k's waiting copy (lane offset 20),
    // and "j has no head" comes before anything j@4 did.
    let all = pending.take_covered(&commit.offsets, &commit.lanes).records;
    let order: Vec<String> = all
        .into_iter()
        .map(|r| {
            if r.destination == "out" {
                "out j@4".to_owned()
            } else {
                names(&[(None, decode(r))]).remove(0)
            }
        })
        .collect();
    assert_eq!(
        order,
        [
            "cleared j",
            "ended-cleared j@1",
            "released j@3",
            "cleared j",
            "out j@4"
        ]
    );
}

#[test]
fn keyed_messages_wait_until_the_partition_is_loaded_then_follow_what_it_holds() {
    let (d, pending, lane) = assigned();
    d.receive(tp(), msg(9, "k"), None, false);
    let mut keyless = Message::new("x");
    keyless.meta.offset = Some(10);
    d.receive(tp(), keyless, None, false);
    assert_eq!(taken(&d), vec![(tp(), 10)], "only the keyless one");
    // What the parked partition holds: k parked behind offset 7 (ended
    // since), with one copy still to run; j's head at 5 is live, and a
    // late `ended` of an older head of j does not end it.
    let marker = written(&pending, &ToCommit::default()).pop().unwrap().1;
    let mut old = msg(8, "k");
    old.payload = "old".into();
    let p = parked();
    d.lane_read(
        &lane,
        vec![
            (0, decode(p.head(b"k", 7))),
            (1, decode(p.follower(&old, b"k", 8))),
            (2, decode(p.head(b"j", 5))),
            (3, decode(p.ended(b"j", 4))),
            (4, decode(p.ended(b"k", 7))),
            (5, marker),
        ],
    );
    // The copy runs first; k@9 of this partition is parked behind it.
    let first = next(&d, &lane.tp, 1);
    assert_eq!(&first.message.payload[..], b"old");
    assert!(d.take().ready().is_none());
    d.settle(&first.ticket, Settlement::Done).unwrap();
    assert!(d.take().ready().is_none(), "k@9 was parked behind it");
    let commit = d.take_to_commit();
    assert_eq!(commit.offsets, vec![(tp(), 11)]);
    let records = names(&written(&pending, &commit));
    assert!(records.contains(&"copy k@9".to_owned()), "{records:?}");
    assert!(records.contains(&"cleared k".to_owned()), "{records:?}");
    assert!(
        records.contains(&"ended-cleared j@4".to_owned()),
        "{records:?}"
    );
    assert!(
        !records.contains(&"cleared j".to_owned()),
        "j's head is live: {records:?}"
    );
    // j is still parked: its next message is copied.
    d.receive(tp(), msg(11, "j"), None, false);
    assert!(d.take().ready().is_none());
}

#[test]
fn a_rewind_of_a_lane_loads_its_partition_again() {
    let (d, pending, lane) = loaded();
    d.receive(tp(), msg(0, "k"), None, false);
    let rewound = d.rewind(std::slice::from_ref(&lane.tp));
    assert_eq!(rewound, vec![(tp(), 0)], "the main partition is read again");
    let again = d.lanes();
    assert_ne!(again[0].generation, lane.generation, "a new lane");
    assert_eq!(
        names(&written(&pending, &ToCommit::default())),
        ["marker"],
        "a new marker (the old lane's records are dropped)"
    );
    d.receive(tp(), msg(0, "k"), None, false);
    assert!(d.take().ready().is_none(), "loading again");
}

#[test]
fn records_of_a_partition_this_member_lost_are_not_written() {
    let (d, pending, lane) = loaded();
    d.receive(tp(), msg(0, "k"), None, false);
    park_k(&d, &pending);
    d.lane_read(&lane, vec![(3, decode(parked().ended(b"k", 0)))]);
    d.revoke([("t", 0)]);
    assert!(
        written(&pending, &ToCommit::default()).is_empty(),
        "k's clean-up after its head ended goes with the partition"
    );
}

#[test]
fn a_retry_copy_that_ends_tells_its_main_partition_and_one_deferred_again_does_not() {
    let (d, pending, _) = loaded();
    let retry = TopicPartition::new(RETRY, 2);
    d.assign([(retry.clone(), true)]);
    let copy = |offset: i64, key: &str| {
        let mut m = msg(offset, key)
            .with_header(wire::ORIGINAL_PARTITION, "0")
            .with_header(wire::ORIGINAL_OFFSET, "40");
        m.meta.source = RETRY.into();
        m.meta.partition = Some(2);
        m.meta.retry_of = Some("t".into());
        m
    };
    d.receive(retry.clone(), copy(5, "k"), None, true);
    d.receive(retry.clone(), copy(6, "j"), None, true);
    let k = d.take().ready().unwrap();
    let j = d.take().ready().unwrap();
    d.settle(&k.ticket, Settlement::Done).unwrap();
    // Deferred through a tier the source does not subscribe to: still a
    // deferral.
    slot(&pending, &j.ticket)
        .produce("t.g.retry.1h", msg(40, "j"))
        .unwrap();
    d.settle(&j.ticket, Settlement::Done).unwrap();
    let records = written(&pending, &d.take_to_commit());
    assert_eq!(names(&records), ["ended k@40"], "only k's head ended");
    assert_eq!(records[0].0, Some(0));
}

#[test]
fn a_transaction_of_parked_records_only_is_fenced_by_the_partitions_offsets() {
    let (d, _pending, lane) = loaded();
    assert_eq!(
        d.fence(),
        vec![(lane.tp.clone(), 0)],
        "nothing read on the main partition: the lane's (no copy read yet)"
    );
    d.receive(tp(), msg(7, "k"), None, false);
    assert_eq!(
        d.fence(),
        vec![(tp(), 7)],
        "where the main partition was read from"
    );
    taken(&d);
    let commit = d.take_to_commit();
    d.mark_committed(&commit.offsets);
    assert_eq!(d.fence(), vec![(tp(), 8)], "its committed offset");
}

#[test]
fn a_finished_lane_copy_is_forgotten_at_once_behind_a_waiting_one() {
    let (d, pending, lane) = loaded();
    d.receive(tp(), msg(0, "k"), None, false);
    park_k(&d, &pending);
    d.lane_read(
        &lane,
        vec![
            (5, decode(parked().follower(&msg(1, "k"), b"k", 1))),
            (6, decode(parked().follower(&msg(2, "j"), b"j", 2))),
        ],
    );
    let j = next(&d, &lane.tp, 6);
    d.settle(&j.ticket, Settlement::Done).unwrap();
    assert_eq!(d.pending().0, 1, "only k's waiting copy is held");
}
