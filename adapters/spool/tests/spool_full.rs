//! A full spool: `Fail` refuses at once, `Block` waits for the relay to
//! make room (or times out); nothing the spool already accepted is lost.

mod common;

use std::time::{Duration, Instant};

use backstop_spool::{ReliableError, ReliablePublisher, Sent, SpoolConfig, SpoolError, WhenFull};
use common::*;

async fn open(
    switch: &Switch,
    dir: &tempfile::TempDir,
    when_full: WhenFull,
) -> ReliablePublisher<Switch> {
    init_tracing();
    let spool = SpoolConfig::new(dir.path().join("full.spool"))
        .max_records(20)
        .when_full(when_full);
    ReliablePublisher::builder(switch.clone(), spool)
        .budget(quick_budget())
        .relay(quick_relay())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn fail_refuses_when_full_and_keeps_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(&switch, &dir, WhenFull::Fail).await;
    let all = messages("fail", 30, 3);
    switch.set(Mode::Down);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for m in &all {
        match publisher.publish("q", m).await {
            Ok(Sent::Spooled) => accepted.push(m.meta.message_id.as_str()),
            Ok(Sent::Confirmed) => panic!("the broker is down"),
            Err(ReliableError::NotSpooled {
                source: SpoolError::Full { waited: None, .. },
                message_id,
                ..
            }) => refused.push(message_id),
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(accepted.len(), 20);
    assert_eq!(refused.len(), 10);
    assert_eq!(publisher.spool().len(), 20);

    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let arrived = switch.messages("q");
    assert_eq!(
        missing(accepted.iter().copied(), &arrived),
        Vec::<String>::new()
    );
    assert_eq!(arrived.len(), 20, "only what was accepted");
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
}

#[tokio::test]
async fn block_waits_for_room_and_then_takes_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(
        &switch,
        &dir,
        WhenFull::Block {
            timeout: Duration::from_secs(20),
        },
    )
    .await;
    let all = messages("block", 30, 3);
    switch.set(Mode::Down);
    for m in &all[..20] {
        assert_eq!(publisher.publish("q", m).await.unwrap(), Sent::Spooled);
    }
    // The 21st and later wait for room.
    let rest = {
        let publisher = publisher.clone();
        let rest = all[20..].to_vec();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for m in &rest {
                sent.push(publisher.publish("q", m).await.unwrap());
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rest.is_finished(), "blocked while the spool is full");
    assert_eq!(publisher.spool().len(), 20);

    switch.set(Mode::Up);
    let sent = rest.await.unwrap();
    assert_eq!(sent.len(), 10);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let arrived = switch.messages("q");
    assert_eq!(
        missing(all.iter().map(|m| m.meta.message_id.as_str()), &arrived),
        Vec::<String>::new()
    );
    assert_eq!(order_breaks(&arrived), Vec::<String>::new());
}

#[tokio::test]
async fn block_gives_up_after_its_timeout_and_keeps_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::default();
    let publisher = open(
        &switch,
        &dir,
        WhenFull::Block {
            timeout: Duration::from_millis(300),
        },
    )
    .await;
    let all = messages("timeout", 21, 1);
    switch.set(Mode::Down);
    for m in &all[..20] {
        assert_eq!(publisher.publish("q", m).await.unwrap(), Sent::Spooled);
    }
    let started = Instant::now();
    let err = publisher.publish("q", &all[20]).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        matches!(
            &err,
            ReliableError::NotSpooled {
                source: SpoolError::Full {
                    waited: Some(_),
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.message_id(), "timeout-20");

    switch.set(Mode::Up);
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let arrived = switch.messages("q");
    assert_eq!(
        missing(
            all[..20].iter().map(|m| m.meta.message_id.as_str()),
            &arrived
        ),
        Vec::<String>::new()
    );
    assert_eq!(arrived.len(), 20);
}
