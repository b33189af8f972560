//! The dispatcher's unit tests.

use super::*;

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

fn msg(offset: i64, key: &str) -> Message {
    let mut m = Message::new("x").with_key(key.to_owned());
    m.meta.offset = Some(offset);
    m
}

#[test]
fn hands_out_at_most_max_in_flight() {
    let d = Dispatcher::new(1, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    d.receive(tp(), msg(1, "b"), None, false);
    let first = d.take().ready().unwrap();
    assert!(d.take().ready().is_none(), "one is out");
    d.settle(&first.ticket, Settlement::Done).unwrap();
    assert_eq!(d.take().ready().unwrap().ticket.offset, 1);
    assert_eq!(d.outstanding(), 1);
}

#[test]
fn a_settled_message_goes_back_to_the_poll_thread_to_be_dropped() {
    let d = Dispatcher::new(10, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    let taken = d.take().ready().unwrap();
    let weak = Arc::downgrade(&taken.message);
    let ticket = taken.ticket;
    drop(taken.message);
    d.settle(&ticket, Settlement::Done).unwrap();
    assert!(
        weak.upgrade().is_some(),
        "held for the poll thread, not dropped here"
    );
    let mut freed = Vec::new();
    d.receive_all(&mut Vec::new(), &mut Vec::new(), &mut freed);
    assert_eq!(freed.len(), 1);
    freed.clear();
    assert!(weak.upgrade().is_none(), "dropped by whoever drains it");
    // A requeue keeps the message: nothing to free.
    d.receive(tp(), msg(1, "b"), None, false);
    let again = d.take().ready().unwrap();
    d.settle(&again.ticket, Settlement::Requeue).unwrap();
    d.take_freed(&mut freed);
    assert!(freed.is_empty());
    // Settled messages join what the poll thread still keeps, after it.
    let again = d.take().ready().unwrap();
    d.settle(&again.ticket, Settlement::Done).unwrap();
    let kept = Arc::new(msg(9, "k"));
    freed.push(Arc::clone(&kept));
    d.take_freed(&mut freed);
    let offsets: Vec<_> = freed.iter().map(|m| m.meta.offset).collect();
    assert_eq!(
        offsets,
        [Some(9), Some(1)],
        "kept first, then the settled one"
    );
}

#[test]
fn a_settle_wakes_the_source_only_when_it_can_take_something() {
    let d = Dispatcher::new(1, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    let first = d.take().ready().unwrap();
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // The receive stored a permit: consume it.
    let mut changed = Box::pin(d.changed());
    assert!(changed.as_mut().poll(&mut cx).is_ready());
    // Full (1 of 1 out): settling opens a slot, so it wakes.
    d.settle(&first.ticket, Settlement::Done).unwrap();
    let mut changed = Box::pin(d.changed());
    assert!(changed.as_mut().poll(&mut cx).is_ready(), "a slot opened");
    // Not full, nothing released: no wake-up (no spurious loop turn).
    let d = Dispatcher::new(10, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    let first = d.take().ready().unwrap();
    let mut changed = Box::pin(d.changed());
    assert!(changed.as_mut().poll(&mut cx).is_ready());
    d.settle(&first.ticket, Settlement::Done).unwrap();
    let mut changed = Box::pin(d.changed());
    assert!(
        changed.as_mut().poll(&mut cx).is_pending(),
        "nothing new to take"
    );
    drop(changed);
    // The next message of a key released by a settle wakes.
    d.receive(tp(), msg(1, "k"), None, false);
    d.receive(tp(), msg(2, "k"), None, false);
    let mut changed = Box::pin(d.changed());
    assert!(changed.as_mut().poll(&mut cx).is_ready());
    let one = d.take().ready().unwrap();
    assert!(d.take().ready().is_none(), "k@2 waits behind k@1");
    d.settle(&one.ticket, Settlement::Done).unwrap();
    let mut changed = Box::pin(d.changed());
    assert!(
        changed.as_mut().poll(&mut cx).is_ready(),
        "k@2 became ready"
    );
}

#[test]
fn revoke_fences_queued_and_in_flight_deliveries() {
    let d = Dispatcher::new(10, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    d.receive(tp(), msg(1, "b"), None, false);
    d.receive(tp(), msg(2, "c"), None, false);
    let first = d.take().ready().unwrap();
    d.settle(&first.ticket, Settlement::Done).unwrap();
    let second = d.take().ready().unwrap();
    let commit = d.revoke([("t", 0)]);
    assert_eq!(commit, vec![(tp(), 1)], "only offset 0 is done");
    assert!(d.take().ready().is_none(), "queued offset 2 is dropped");
    assert!(matches!(
        d.settle(&second.ticket, Settlement::Done),
        Err(Refused::Fenced)
    ));
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(1, "b"), None, false);
    let again = d.take().ready().unwrap();
    assert_ne!(again.ticket.generation, second.ticket.generation);
}

#[test]
fn a_revoke_cancels_the_handlers_of_its_deliveries() {
    let d = Dispatcher::new(10, 100, usize::MAX);
    let other = TopicPartition::new("t", 1);
    d.assign([(tp(), false), (other.clone(), false)]);
    d.receive(tp(), msg(0, "a"), None, false);
    d.receive(other.clone(), msg(0, "b"), None, false);
    let (a, b) = (d.take().ready().unwrap(), d.take().ready().unwrap());
    assert!(!a.revoked.is_cancelled() && !b.revoked.is_cancelled());
    d.revoke([("t", 0)]);
    assert!(
        a.revoked.is_cancelled(),
        "the revoked partition's run stops"
    );
    assert!(
        !b.revoked.is_cancelled(),
        "the other partition's run goes on"
    );
}

#[test]
fn messages_polled_before_a_revoke_are_never_handed_out_after_it() {
    let d = Dispatcher::new(10, 100, usize::MAX);
    d.assign([(tp(), false)]);
    d.revoke([("t", 0)]);
    // The rest of a batch collected across the rebalance.
    d.receive(tp(), msg(5, "a"), None, false);
    assert!(
        d.take().ready().is_none(),
        "a revoked partition's late message is dropped"
    );
    d.assign([(tp(), false)]);
    d.receive(tp(), msg(5, "a"), None, false);
    assert!(
        d.take().ready().is_some(),
        "reassigned, it is tracked again"
    );
}

#[test]
fn a_held_consumer_pauses_every_partition_until_released() {
    let d = Dispatcher::new(100, 100, usize::MAX);
    let other = TopicPartition::new("t", 1);
    d.assign([(tp(), false), (other.clone(), false)]);
    assert!(d.maintain().pause.is_empty());
    d.hold(true);
    let mut paused = d.maintain().pause;
    paused.sort();
    assert_eq!(paused, vec![tp(), other.clone()]);
    assert!(d.maintain().resume.is_empty(), "stays paused while held");
    d.hold(false);
    let mut resumed = d.maintain().resume;
    resumed.sort();
    assert_eq!(resumed, vec![tp(), other]);
}

#[test]
fn a_full_partition_is_paused_and_resumed_when_drained() {
    let d = Dispatcher::new(100, 4, usize::MAX);
    d.assign([(tp(), false)]);
    for o in 0..3 {
        assert!(d.receive(tp(), msg(o, "k"), None, false).is_none());
    }
    assert_eq!(d.receive(tp(), msg(3, "k"), None, false), Some(tp()));
    for _ in 0..3 {
        let t = d.take().ready().unwrap();
        d.settle(&t.ticket, Settlement::Done).unwrap();
    }
    let actions = d.maintain();
    assert_eq!(actions.resume, vec![tp()]);
    assert_eq!(actions.store, vec![(tp(), 3)]);
}

#[test]
fn a_partition_holding_too_many_bytes_is_paused() {
    let d = Dispatcher::new(100, 1_000, 4_096);
    d.assign([(tp(), false)]);
    let big = |o: i64| {
        let mut m = Message::new(vec![0u8; 1_500]).with_key(format!("k{o}"));
        m.meta.offset = Some(o);
        m
    };
    assert!(d.receive(tp(), big(0), None, false).is_none());
    assert!(d.receive(tp(), big(1), None, false).is_none());
    assert_eq!(
        d.receive(tp(), big(2), None, false),
        Some(tp()),
        "over 4 KiB held"
    );
    for _ in 0..3 {
        let t = d.take().ready().unwrap();
        d.settle(&t.ticket, Settlement::Done).unwrap();
    }
    assert_eq!(
        d.maintain().resume,
        vec![tp()],
        "done messages free their bytes"
    );
}

#[test]
fn the_consumer_budget_pauses_every_partition_and_resumes_at_half() {
    // 8 MB over 16 partitions, each partition allowed far more on its own.
    let budget = 8 << 20;
    let d = Dispatcher::with_totals(1_000, (100_000, 64 << 20), (100_000, budget));
    let tps: Vec<TopicPartition> = (0..16).map(|p| TopicPartition::new("t", p)).collect();
    d.assign(tps.iter().map(|tp| (tp.clone(), false)));
    let record = |o: i64| {
        let mut m = Message::new(vec![0u8; 100_000]).with_key(format!("k{o}"));
        m.meta.offset = Some(o);
        m
    };
    let mut paused = Vec::new();
    let mut offset = 0;
    // Round-robin, like a fetch over 16 partitions, until the poll
    // thread would stop: every partition paused.
    while paused.len() < tps.len() {
        let mut batch: Vec<Incoming> = tps
            .iter()
            .filter(|tp| !paused.contains(*tp))
            .map(|tp| Incoming {
                tp: tp.clone(),
                message: Arc::new(record(offset)),
                due: None,
                delayed: false,
                epoch: 0,
            })
            .collect();
        offset += 1;
        d.receive_all(&mut batch, &mut paused, &mut Vec::new());
        assert!(offset < 1_000, "never paused");
    }
    let (_, held) = d.pending();
    assert!(held >= budget && held < budget + 16 * 101_000, "{held}");
    assert!(d.maintain().resume.is_empty(), "still over budget");
    let mut resumed = Vec::new();
    while resumed.is_empty() {
        let t = d.take().ready().unwrap();
        d.settle(&t.ticket, Settlement::Done).unwrap();
        resumed = d.maintain().resume;
        if resumed.is_empty() {
            assert!(d.pending().1 > budget / 2, "not resumed at half the budget");
        }
    }
    assert!(d.pending().1 <= budget / 2, "resumed above half the budget");
    assert_eq!(resumed.len(), 16, "all resume together");
}

#[test]
fn the_consumer_message_budget_counts_every_partition() {
    let d = Dispatcher::with_totals(1_000, (100, usize::MAX), (8, usize::MAX));
    let tps: Vec<TopicPartition> = (0..16).map(|p| TopicPartition::new("t", p)).collect();
    d.assign(tps.iter().map(|tp| (tp.clone(), false)));
    let mut paused = Vec::new();
    for (o, tp) in tps.iter().enumerate().take(8) {
        d.receive_all(
            &mut vec![Incoming {
                tp: tp.clone(),
                message: Arc::new(msg(o as i64, "k")),
                due: None,
                delayed: false,
                epoch: 0,
            }],
            &mut paused,
            &mut Vec::new(),
        );
    }
    assert_eq!(
        paused.len(),
        16,
        "8 messages over 8 partitions pause all 16"
    );
}

#[test]
fn a_rewind_starts_the_partition_over_and_drops_what_was_polled_before_it() {
    use backstop::transaction::Transaction;

    use crate::transaction::DeliverySlot;

    let d = Dispatcher::new(10, 100, usize::MAX);
    let pending = Arc::new(Pending::default());
    d.transactional(Arc::clone(&pending));
    d.assign([(tp(), false)]);
    for o in 0..3 {
        d.receive(tp(), msg(o, &format!("k{o}")), None, false);
    }
    let slot_of = |t: &Taken| DeliverySlot {
        pending: Arc::clone(&pending),
        tp: t.ticket.tp.clone(),
        generation: t.ticket.generation,
        offset: t.ticket.offset,
    };
    let first = d.take().ready().unwrap();
    let before = slot_of(&first);
    d.settle(&first.ticket, Settlement::Done).unwrap();
    // Polled before the rewind, tracked after it: dropped.
    let stale_epoch = d.rewind_epoch();
    assert_eq!(
        d.rewind(&[tp()]),
        vec![(tp(), 0)],
        "back to the first offset"
    );
    d.receive_all(
        &mut vec![Incoming {
            tp: tp(),
            message: Arc::new(msg(7, "k7")),
            due: None,
            delayed: false,
            epoch: stale_epoch,
        }],
        &mut Vec::new(),
        &mut Vec::new(),
    );
    assert!(
        d.take().ready().is_none(),
        "nothing polled before the rewind"
    );
    // Read again from offset 0, under the new generation, which may produce.
    d.receive(tp(), msg(0, "k0"), None, false);
    let again = d.take().ready().unwrap();
    assert_eq!(again.ticket.offset, 0);
    assert!(slot_of(&again).produce("dlq", Message::new("x")).is_ok());
    assert!(
        before.produce("dlq", Message::new("x")).is_err(),
        "the old generation is fenced"
    );
    assert!(d.settle(&first.ticket, Settlement::Done).is_err());
}
