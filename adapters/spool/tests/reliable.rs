//! The reliable publisher against an in-memory broker that can be switched
//! off: confirmed when up, spooled when down, relayed in order when back.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backstop::publish::PublishError;
use backstop::{Message, RetryPolicy};
use backstop_spool::{Budget, OpenError, ReliableError, ReliablePublisher, Sent, SpoolConfig};
use common::*;

async fn open(switch: &Switch, dir: &tempfile::TempDir) -> ReliablePublisher<Switch> {
    init_tracing();
    ReliablePublisher::builder(switch.clone(), SpoolConfig::new(dir.path().join("p.spool")))
        .budget(quick_budget())
        .relay(quick_relay())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn confirmed_when_the_broker_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    for m in messages("up", 20, 3) {
        assert_eq!(publisher.publish("q", &m).await.unwrap(), Sent::Confirmed);
    }
    assert_eq!(switch.ids("q").len(), 20);
    assert!(publisher.spool().is_empty());
}

#[tokio::test]
async fn spooled_while_down_and_relayed_in_order_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    let all = messages("down", 300, 5);

    switch.set(Mode::Down);
    let started = Instant::now();
    assert_eq!(
        publisher.publish("q", &all[0]).await.unwrap(),
        Sent::Spooled
    );
    let attempts_first = switch.attempts.load(Ordering::Relaxed);
    assert!(attempts_first >= 3, "the budget's 3 attempts were spent");
    assert!(publisher.broker_unreachable());
    for m in &all[1..200] {
        assert_eq!(publisher.publish("q", m).await.unwrap(), Sent::Spooled);
    }
    // Once the broker is known down, publishes go straight to the spool:
    // the broker saw fewer attempts than publishes (the relay's probes
    // only; through the budget it would be 3 a publish), and 199 fsynced
    // commits on a busy disk stay far from the limit.
    let attempts_after = switch.attempts.load(Ordering::Relaxed) - attempts_first;
    assert!(
        attempts_after < 2 * 199,
        "{attempts_after} broker attempts for 199 publishes"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(publisher.spool().len(), 200);
    assert!(switch.ids("q").is_empty());

    switch.set(Mode::Up);
    // Published while the relay catches up: behind their keys' spooled records.
    for m in &all[200..] {
        let _ = publisher.publish("q", m).await.unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert!(!publisher.broker_unreachable());
    let arrived = switch.messages("q");
    let ids = all.iter().map(|m| m.meta.message_id.as_str());
    assert_eq!(missing(ids, &arrived), Vec::<String>::new());
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
    assert_eq!(arrived.len(), 300, "no duplicates from an in-memory broker");
}

#[tokio::test]
async fn a_key_with_spooled_records_waits_behind_them_other_keys_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    // The broker refuses key a for now (a full partition, say): no outage.
    switch.refuse_key(Some("a"));
    let a1 = Message::new("a1").with_key("a").with_message_id("a1");
    assert_eq!(publisher.publish("q", &a1).await.unwrap(), Sent::Spooled);
    assert!(!publisher.broker_unreachable());

    // Another message of key a goes behind a1 without trying the broker ...
    let a2 = Message::new("a2").with_key("a").with_message_id("a2");
    assert_eq!(publisher.publish("q", &a2).await.unwrap(), Sent::Spooled);
    assert!(
        !switch.tried("a2"),
        "a2 did not try the broker: it waits behind a1"
    );
    let b1 = Message::new("b1").with_key("b").with_message_id("b1");
    // ... while key b goes straight through.
    assert_eq!(publisher.publish("q", &b1).await.unwrap(), Sent::Confirmed);
    assert_eq!(switch.ids("q"), ["b1"]);

    switch.refuse_key(None);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(switch.ids("q"), ["b1", "a1", "a2"]);
    // The key is clear again: direct.
    let a3 = Message::new("a3").with_key("a").with_message_id("a3");
    assert_eq!(publisher.publish("q", &a3).await.unwrap(), Sent::Confirmed);
}

#[tokio::test]
async fn errors_retrying_cannot_fix_are_returned_not_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    switch.set(Mode::Unroutable);
    let err = publisher
        .publish("nowhere", &Message::new("x").with_message_id("u-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ReliableError::Rejected {
                source: PublishError::Unroutable(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.message_id(), "u-1");
    assert_eq!(switch.attempts.load(Ordering::Relaxed), 1, "not retried");
    assert!(publisher.spool().is_empty());
    assert!(!publisher.broker_unreachable());
}

#[tokio::test]
async fn a_full_destination_is_retried_then_spooled_without_declaring_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    switch.set(Mode::Full);
    let m = Message::new("x").with_key("k").with_message_id("f-1");
    assert_eq!(publisher.publish("q", &m).await.unwrap(), Sent::Spooled);
    assert!(
        switch.attempts.load(Ordering::Relaxed) >= 3,
        "retried within the budget"
    );
    assert!(!publisher.broker_unreachable());
    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(switch.ids("q"), ["f-1"]);
}

#[tokio::test]
async fn a_broker_that_never_answers_costs_one_attempt_timeout_per_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let budget = Budget::new(RetryPolicy::retries(1), Duration::from_millis(200));
    let publisher =
        ReliablePublisher::builder(switch.clone(), SpoolConfig::new(dir.path().join("p.spool")))
            .budget(budget.clone())
            .relay(quick_relay())
            .open()
            .await
            .unwrap();
    switch.hang.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let m = Message::new("x").with_message_id("h-1");
    assert_eq!(publisher.publish("q", &m).await.unwrap(), Sent::Spooled);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took <= budget.worst_case() + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(publisher.broker_unreachable());
    switch.hang.store(false, Ordering::Relaxed);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(switch.ids("q"), ["h-1"]);
}

#[tokio::test]
async fn a_message_without_an_id_keeps_the_one_it_was_spooled_with() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    switch.set(Mode::Down);
    let mut m = Message::new("anonymous");
    m.meta.message_id.clear();
    assert_eq!(publisher.publish("q", &m).await.unwrap(), Sent::Spooled);
    let spooled_id = publisher.spool().peek(1).await.unwrap()[0]
        .message
        .meta
        .message_id
        .clone();
    assert!(!spooled_id.is_empty());
    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(switch.ids("q"), [spooled_id]);
}

#[tokio::test]
async fn a_second_publisher_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let _first = open(&switch, &dir).await;
    let err = ReliablePublisher::open(switch.clone(), SpoolConfig::new(dir.path().join("p.spool")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Spool(backstop_spool::SpoolError::Locked { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("p.spool.lock"), "{err}");
}

#[tokio::test]
async fn a_client_timeout_longer_than_an_attempt_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let err = ReliablePublisher::builder(
        Switch::default(),
        SpoolConfig::new(dir.path().join("p.spool")),
    )
    .budget(Budget::new(RetryPolicy::none(), Duration::from_secs(5)))
    .client_timeout(Duration::from_secs(30))
    .open()
    .await
    .unwrap_err();
    assert!(matches!(err, OpenError::ClientTimeout { .. }), "{err}");
}

#[tokio::test]
async fn what_a_closed_publisher_left_is_relayed_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    switch.set(Mode::Down);
    let first = open(&switch, &dir).await;
    let all = messages("restart", 50, 4);
    for m in &all {
        assert_eq!(first.publish("q", m).await.unwrap(), Sent::Spooled);
    }
    first.close().await.unwrap();
    switch.set(Mode::Up);
    let second = open(&switch, &dir).await;
    assert_eq!(second.spool().len(), 50);
    second.flush(Duration::from_secs(10)).await.unwrap();
    let arrived = switch.messages("q");
    assert_eq!(
        missing(all.iter().map(|m| m.meta.message_id.as_str()), &arrived),
        Vec::<String>::new()
    );
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
}

#[tokio::test]
async fn a_record_the_broker_refuses_for_good_blocks_only_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    switch.set(Mode::Down);
    // Spooled for "gone" (a destination that will refuse), then for "q".
    let stuck = Message::new("s").with_key("a").with_message_id("stuck");
    let behind = Message::new("s2").with_key("a").with_message_id("behind");
    let other = Message::new("o").with_key("b").with_message_id("other");
    assert!(
        publisher
            .publish("gone", &stuck)
            .await
            .unwrap()
            .is_spooled()
    );
    assert!(
        publisher
            .publish("gone", &behind)
            .await
            .unwrap()
            .is_spooled()
    );
    assert!(publisher.publish("q", &other).await.unwrap().is_spooled());
    publisher.close().await.unwrap();
    switch.set(Mode::Up);
    // The in-memory broker takes any queue name; refuse "gone" through a wrapper.

    #[derive(Clone)]
    struct Refusing(Switch);
    #[async_trait::async_trait]
    impl backstop::publish::Publisher for Refusing {
        async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
            if destination == "gone" {
                return Err(PublishError::MissingDestination(destination.to_owned()));
            }
            self.0.publish(destination, message).await
        }
    }
    let publisher = ReliablePublisher::builder(
        Refusing(switch.clone()),
        SpoolConfig::new(dir.path().join("p.spool")),
    )
    .budget(quick_budget())
    .relay(quick_relay())
    .open()
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || switch.ids("q") == ["other"]).await);
    // The refused key keeps its order in the spool; an operator can drop the record.
    let left: Vec<_> = publisher.spool().peek(10).await.unwrap();
    let ids: Vec<_> = left
        .iter()
        .map(|r| r.message.meta.message_id.as_str())
        .collect();
    assert_eq!(ids, ["stuck", "behind"]);
    // A new publish of the blocked key waits behind it too.
    let later = Message::new("l").with_key("a").with_message_id("later");
    assert!(
        publisher
            .publish("gone", &later)
            .await
            .unwrap()
            .is_spooled()
    );
    assert_eq!(
        publisher
            .spool()
            .remove(&[left[0].seq, left[1].seq])
            .await
            .unwrap(),
        2
    );
}

/// Finding: a spooled record the broker refuses for good used to block its
/// ordering unit forever (all keyless messages to a destination are one unit).
#[tokio::test]
async fn a_spooled_message_refused_for_good_is_set_aside_and_its_unit_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir).await;
    switch.set(Mode::Down);
    let big = Message::new(vec![b'x'; 2_048]).with_message_id("big");
    assert!(publisher.publish("q", &big).await.unwrap().is_spooled());
    let small: Vec<Message> = (0..10)
        .map(|i| Message::new(format!("{i}")).with_message_id(format!("small-{i}")))
        .collect();
    for m in &small {
        assert!(publisher.publish("q", m).await.unwrap().is_spooled());
    }
    // The broker is back, and takes nothing over 1 KB.
    switch.max_payload.store(1_024, Ordering::Relaxed);
    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(switch.ids("q").len(), 10, "the keyless unit went on");
    let refused = publisher.spool().refused(10).await.unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].message_id, "big");
    assert_eq!(refused[0].reason, "too_large");
    assert_eq!(refused[0].destination.as_deref(), Some("q"));
    let path = publisher.spool().path().to_owned();
    // Readable by a tool while the publisher holds the spool.
    let listed = backstop_spool::Spool::read_refused(&path, 10)
        .await
        .unwrap();
    assert_eq!(listed, refused);
    publisher.close().await.unwrap();
}

/// Down until switched up; then nacks everything for `full` (2 ms each)
/// and confirms the rest.
#[derive(Clone, Default)]
struct HalfFull {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    confirmed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl backstop::publish::Publisher for HalfFull {
    async fn publish(&self, destination: &str, message: &Message) -> Result<(), PublishError> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(PublishError::Unavailable("connection refused".into()));
        }
        if destination == "full" {
            tokio::time::sleep(Duration::from_millis(2)).await;
            return Err(PublishError::Full(destination.to_owned()));
        }
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message.meta.message_id.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_behind_a_large_block_of_refused_keys_are_relayed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let broker = HalfFull::default();
    let publisher =
        ReliablePublisher::builder(broker.clone(), SpoolConfig::new(dir.path().join("p.spool")))
            .budget(quick_budget())
            .relay(quick_relay())
            .open()
            .await
            .unwrap();
    // Spooled during an outage: 12,000 records for a destination that will
    // stay full (a key each), then 20 for a healthy one.
    for i in 0..12_000 {
        let m = Message::new("x")
            .with_key(format!("f{i}"))
            .with_message_id(format!("full-{i}"));
        assert_eq!(publisher.publish("full", &m).await.unwrap(), Sent::Spooled);
    }
    for i in 0..20 {
        let m = Message::new("x").with_message_id(format!("ok-{i}"));
        assert_eq!(publisher.publish("ok", &m).await.unwrap(), Sent::Spooled);
    }
    broker.up.store(true, Ordering::Relaxed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if broker.confirmed.lock().unwrap().len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let confirmed = broker.confirmed.lock().unwrap().clone();
    let expected: Vec<String> = (0..20).map(|i| format!("ok-{i}")).collect();
    assert_eq!(
        confirmed,
        expected,
        "the healthy records, in order, after {:?}",
        started.elapsed()
    );
}
