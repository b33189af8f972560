use super::*;

const HOLD: Duration = Duration::from_millis(20);

/// A ledger with tags `1..=n` entered at `at`.
fn ledger(n: u64, at: Instant) -> Ledger<u64> {
    let mut ledger = Ledger::new(HOLD);
    for tag in 1..=n {
        ledger.open(tag, at);
    }
    ledger
}

/// The frames of the next step (it must send).
fn frames(ledger: &mut Ledger<u64>, now: Instant) -> (Option<u64>, Vec<u64>) {
    match ledger.plan(now) {
        Step::Send(plan) => (
            plan.multiple.map(|(tag, _)| tag),
            plan.single.into_iter().map(|(tag, _)| tag).collect(),
        ),
        other => panic!("expected frames, got {other:?}"),
    }
}

#[test]
fn completions_in_order_go_out_as_one_multiple_frame() {
    let now = Instant::now();
    let mut ledger = ledger(5, now);
    for tag in [3, 1, 2] {
        assert!(matches!(ledger.complete(tag, tag), Marked::Waits));
    }
    assert_eq!(frames(&mut ledger, now), (Some(3), vec![]));
    assert!(!ledger.acked(1), "not before the frame was sent");
    ledger.confirm(true, &[]);
    assert!((1..=3).all(|tag| ledger.acked(tag)));
    assert!(!ledger.acked(4));
    assert!(matches!(ledger.plan(now), Step::Idle));
}

#[test]
fn completions_behind_a_young_hole_wait_for_it_then_share_its_frame() {
    let now = Instant::now();
    let mut ledger = ledger(4, now);
    for tag in [2, 3] {
        ledger.complete(tag, tag);
    }
    match ledger.plan(now) {
        Step::HoldUntil(due) => assert_eq!(due, now + HOLD),
        other => panic!("expected a hold, got {other:?}"),
    }
    ledger.complete(1, 1);
    assert_eq!(frames(&mut ledger, now), (Some(3), vec![]));
}

#[test]
fn a_slow_hole_is_never_covered_and_what_completed_behind_it_is_acked_alone() {
    let now = Instant::now();
    let mut ledger = ledger(6, now);
    for tag in [1, 2, 4, 6] {
        ledger.complete(tag, tag);
    }
    let later = now + HOLD;
    assert_eq!(frames(&mut ledger, later), (Some(2), vec![4, 6]));
    ledger.confirm(true, &[]);
    assert!([1, 2, 4, 6].iter().all(|&tag| ledger.acked(tag)));
    // 3 is nacked (its frame sent), 5 completes: the run reaches 6,
    // named already, so the multiple frame names 5, the last
    // completed tag of the run.
    ledger.settled(3);
    ledger.complete(5, 5);
    assert_eq!(frames(&mut ledger, later), (Some(5), vec![]));
    ledger.confirm(true, &[]);
    assert_eq!(ledger.len(), 0, "every tag passed");
    assert_eq!(ledger.next, 7);
}

#[test]
fn no_tag_is_named_twice_and_a_settled_tag_cannot_complete() {
    let now = Instant::now();
    let mut ledger = ledger(3, now);
    ledger.complete(2, 2);
    assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
    assert!(matches!(ledger.complete(2, 2), Marked::Settled), "planned");
    ledger.confirm(true, &[]);
    assert!(matches!(ledger.complete(2, 2), Marked::Settled), "sent");
    ledger.settled(1);
    ledger.complete(3, 3);
    assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
    ledger.confirm(true, &[]);
    assert!(matches!(ledger.complete(1, 1), Marked::Settled), "passed");
}

#[test]
fn a_nack_during_a_flush_is_not_passed_before_it_was_sent() {
    let now = Instant::now();
    let mut ledger = ledger(3, now);
    ledger.complete(2, 2);
    // 1 is a hole while the flush plans; its nack goes out meanwhile.
    assert_eq!(frames(&mut ledger, now + HOLD), (None, vec![2]));
    ledger.settled(1);
    ledger.confirm(true, &[]);
    ledger.complete(3, 3);
    assert_eq!(frames(&mut ledger, now + HOLD), (Some(3), vec![]));
}

#[test]
fn a_tag_never_seen_ends_multiple_frames_for_the_channel() {
    let now = Instant::now();
    let mut ledger = Ledger::new(HOLD);
    for tag in [1, 2, 4, 5] {
        ledger.open(tag, now);
        ledger.complete(tag, tag);
    }
    assert_eq!(frames(&mut ledger, now), (Some(2), vec![4, 5]));
    ledger.confirm(true, &[]);
    assert!(ledger.unseen, "3 was skipped");
    assert_eq!(ledger.len(), 0, "the settled run behind the gap is passed");
    for tag in [6, 7] {
        ledger.open(tag, now);
        ledger.complete(tag, tag);
    }
    assert_eq!(
        frames(&mut ledger, now),
        (None, vec![6, 7]),
        "never multiple again"
    );
}

#[test]
fn a_failed_frame_leaves_its_tags_unacked() {
    let now = Instant::now();
    let mut ledger = ledger(4, now);
    for tag in [1, 2, 4] {
        ledger.complete(tag, tag);
    }
    assert_eq!(frames(&mut ledger, now + HOLD), (Some(2), vec![4]));
    ledger.confirm(true, &[4]);
    assert!(ledger.acked(1) && ledger.acked(2));
    assert!(!ledger.acked(4), "its frame failed");
    let mut ledger = self::ledger(2, now);
    ledger.complete(1, 1);
    ledger.complete(2, 2);
    assert_eq!(frames(&mut ledger, now), (Some(2), vec![]));
    ledger.confirm(false, &[]);
    assert!(
        !ledger.acked(1) && !ledger.acked(2),
        "the multiple frame failed"
    );
}

#[test]
fn a_long_hole_keeps_the_ledger_small() {
    let now = Instant::now();
    let mut ledger = Ledger::new(HOLD);
    ledger.open(1, now);
    // 100,000 deliveries pass behind the hole, 64 at a time.
    let mut tag = 2;
    while tag < 100_002 {
        for t in tag..tag + 64 {
            ledger.open(t, now);
            ledger.complete(t, t);
        }
        let (multiple, single) = frames(&mut ledger, now + HOLD);
        assert_eq!((multiple, single.len()), (None, 64));
        ledger.confirm(true, &[]);
        tag += 64;
    }
    assert!(
        ledger.len() <= 2,
        "the hole and one settled run: {}",
        ledger.len()
    );
    assert!(ledger.acked(50_000) && !ledger.acked(1));
    ledger.complete(1, 1);
    assert_eq!(frames(&mut ledger, now + HOLD), (Some(1), vec![]));
    ledger.confirm(true, &[]);
    assert_eq!((ledger.len(), ledger.next), (0, tag));
}

#[test]
fn an_unknown_tag_is_left_to_the_caller_and_a_repeat_is_ignored() {
    let now = Instant::now();
    let mut ledger = ledger(1, now);
    assert!(matches!(ledger.complete(9, 9), Marked::Unknown(9)));
    ledger.open(1, now);
    assert_eq!(ledger.len(), 1);
}
