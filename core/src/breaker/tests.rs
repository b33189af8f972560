use std::time::Duration;

use super::*;

fn breaker(n: u32) -> Breaker {
    Breaker::new(BreakerConfig::new(n, Duration::from_secs(10)))
}

#[tokio::test(start_paused = true)]
async fn trips_after_exactly_the_configured_outages_in_a_row() {
    let b = breaker(4);
    for _ in 0..3 {
        b.record_outage();
    }
    assert_eq!(b.state(), BreakerState::Closed, "3 of 4 outages");
    b.record_outage();
    assert_eq!(b.state(), BreakerState::Open, "the 4th outage trips it");
    assert_eq!(b.trips(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let b = breaker(3);
    b.record_outage();
    b.record_outage();
    b.record_success();
    b.record_outage();
    b.record_outage();
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(Signal::Neutral);
    b.record_outage();
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "a neutral signal neither counts nor resets"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_count_only_when_opted_in() {
    let b = breaker(2);
    b.record(Signal::TransientFailure);
    b.record(Signal::TransientFailure);
    assert_eq!(b.state(), BreakerState::Closed);
    let b = Breaker::new(BreakerConfig::new(2, Duration::from_secs(1)).count_transient(true));
    b.record(Signal::TransientFailure);
    b.record(Signal::TransientFailure);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_after_the_cool_down_then_a_good_probe_closes_it() {
    let b = breaker(1);
    b.record_outage();
    assert_eq!(b.poll_state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(b.poll_state(), BreakerState::Open, "still cooling down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.poll_state(), BreakerState::HalfOpen);
    b.record_success();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_a_new_cool_down() {
    let b = breaker(1);
    b.record_outage();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(b.poll_state(), BreakerState::HalfOpen);
    b.record_outage();
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.trips(), 2);
    let until = b.probe_at().expect("open");
    assert!(until > Instant::now() + Duration::from_secs(9));
}

#[tokio::test(start_paused = true)]
async fn signals_while_open_or_paused_change_nothing() {
    let b = breaker(1);
    b.record_outage();
    b.record_success();
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "late results do not close it"
    );
    b.pause();
    b.record_success();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        b.poll_state(),
        BreakerState::Paused,
        "a pause has no cool-down"
    );
    b.resume();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_manual_breaker_never_trips() {
    let b = Breaker::default();
    for _ in 0..10_000 {
        b.record_outage();
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn changed_wakes_on_a_transition() {
    let b = breaker(1);
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.changed(BreakerState::Closed).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    b.record_outage();
    waiter.await.expect("woken");
}

#[tokio::test(start_paused = true)]
async fn every_clone_and_watcher_reads_each_transition_at_once() {
    let b = breaker(2);
    let clone = b.clone();
    let watch = b.watch();
    for (act, expected) in [
        (Breaker::pause as fn(&Breaker), BreakerState::Paused),
        (Breaker::resume, BreakerState::Closed),
        (Breaker::record_outage, BreakerState::Closed),
        (Breaker::record_outage, BreakerState::Open),
        (Breaker::resume, BreakerState::Closed),
    ] {
        act(&b);
        assert_eq!(clone.state(), expected);
        assert_eq!(*watch.0.borrow(), expected, "the channel agrees");
        assert!(!watch.moved_from(expected));
    }
    // Closing reset the count: one outage after it does not trip.
    clone.record_outage();
    clone.record_success();
    clone.record_outage();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.trips(), 1);
}
