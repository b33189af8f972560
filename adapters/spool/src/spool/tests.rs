use std::time::Duration;

use backstop::Message;

use super::*;

fn config(dir: &tempfile::TempDir) -> SpoolConfig {
    SpoolConfig::new(dir.path().join("t.spool"))
}

fn msg(i: usize, key: &str) -> Message {
    Message::new(format!("payload-{i}"))
        .with_message_id(format!("m-{i}"))
        .with_key(key.to_owned())
        .with_header("seq", i.to_string())
}

#[tokio::test]
async fn records_come_back_in_order_with_everything_published() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..50 {
        seqs.push(spool.push(Some("orders"), &msg(i, "k")).await.unwrap());
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );
    let records = spool.peek(100).await.unwrap();
    assert_eq!(records.len(), 50);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.destination.as_deref(), Some("orders"));
        assert_eq!(r.message.meta.message_id, format!("m-{i}"));
        assert_eq!(r.message.payload, format!("payload-{i}"));
        assert_eq!(r.message.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.message.header("seq"), Some(i.to_string().as_str()));
    }
    // Reading after a seq resumes there.
    let tail = spool.read_after(records[9].seq, 5).await.unwrap();
    assert_eq!(tail[0].message.meta.message_id, "m-10");
    assert_eq!(tail.len(), 5);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_pushes_are_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    let pushes = (0..500).map(|i| {
        let spool = spool.clone();
        async move { spool.push(Some("t"), &msg(i, &format!("k{}", i % 7))).await }
    });
    let results = futures::future::join_all(pushes).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(spool.len(), 500);
    spool.close().await.unwrap();
    let reopened = Spool::open(config(&dir)).await.unwrap();
    assert_eq!(reopened.peek(1_000).await.unwrap().len(), 500);
}

#[tokio::test]
async fn a_reopened_spool_has_its_records_counts_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    for i in 0..10 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        spool.push(Some("t"), &msg(i, key)).await.unwrap();
    }
    let mut dlq = msg(10, "even");
    dlq.meta.source = "orders".into();
    spool.push(None, &dlq).await.unwrap();
    let bytes = spool.bytes();
    let first = spool.peek(1).await.unwrap()[0].seq;
    spool.remove(&[first]).await.unwrap();
    spool.close().await.unwrap();

    let spool = Spool::open(config(&dir)).await.unwrap();
    assert_eq!(spool.len(), 10);
    assert!(spool.bytes() < bytes && spool.bytes() > 0);
    let even = Unit::of(Some("t"), &msg(0, "even"));
    let odd = Unit::of(Some("t"), &msg(0, "odd"));
    assert_eq!(spool.pending(&even), 4);
    assert_eq!(spool.pending(&odd), 5);
    assert_eq!(spool.pending(&Unit::of(None, &dlq)), 1);
    assert_eq!(spool.pending(&Unit::of(Some("other"), &msg(0, "even"))), 0);
    let ids: Vec<_> = spool
        .peek(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.message.meta.message_id)
        .collect();
    let expected: Vec<_> = (1..=10).map(|i| format!("m-{i}")).collect();
    assert_eq!(ids, expected);
    let last = spool.peek(100).await.unwrap().pop().unwrap();
    assert_eq!(last.destination, None);
    assert_eq!(&*last.message.meta.source, "orders");
    // A new record after a reopen comes after the old ones.
    let seq = spool.push(Some("t"), &msg(11, "odd")).await.unwrap();
    assert!(seq > last.seq);
}

#[tokio::test]
async fn removing_records_updates_the_counts_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    let a = spool.push(Some("t"), &msg(0, "a")).await.unwrap();
    let b = spool.push(Some("t"), &msg(1, "b")).await.unwrap();
    let unit_a = Unit::of(Some("t"), &msg(0, "a"));
    assert_eq!(spool.pending(&unit_a), 1);
    assert_eq!(spool.remove(&[a, a, 999]).await.unwrap(), 1);
    assert_eq!(spool.pending(&unit_a), 0);
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.remove(&[b]).await.unwrap(), 1);
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
}

#[tokio::test]
async fn a_second_open_is_refused_until_the_first_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    let err = Spool::open(config(&dir)).await.unwrap_err();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("t.spool.lock"), "{err}");
    spool.close().await.unwrap();
    Spool::open(config(&dir)).await.unwrap();
}

#[tokio::test]
async fn the_spool_runs_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    spool.push(Some("t"), &msg(0, "k")).await.unwrap();
    assert!(dir.path().join("t.spool-wal").exists());
    spool.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("t.spool")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn fail_policy_refuses_at_the_bound_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir).max_records(3).when_full(WhenFull::Fail))
        .await
        .unwrap();
    for i in 0..3 {
        spool.push(Some("t"), &msg(i, "k")).await.unwrap();
    }
    let err = spool.push(Some("t"), &msg(3, "k")).await.unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::Full {
                records: 3,
                waited: None,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(spool.len(), 3);
    let first = spool.peek(1).await.unwrap()[0].seq;
    spool.remove(&[first]).await.unwrap();
    spool.push(Some("t"), &msg(3, "k")).await.unwrap();
    let ids: Vec<_> = spool
        .peek(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.message.meta.message_id)
        .collect();
    assert_eq!(ids, ["m-1", "m-2", "m-3"]);
}

#[tokio::test]
async fn byte_bound_counts_the_record_size() {
    let dir = tempfile::tempdir().unwrap();
    let one = size_of(Some("t"), &msg(0, "k"));
    let spool = Spool::open(
        config(&dir)
            .max_records(None)
            .max_bytes(one * 2)
            .when_full(WhenFull::Fail),
    )
    .await
    .unwrap();
    spool.push(Some("t"), &msg(0, "k")).await.unwrap();
    spool.push(Some("t"), &msg(1, "k")).await.unwrap();
    assert!(matches!(
        spool.push(Some("t"), &msg(2, "k")).await,
        Err(SpoolError::Full { .. })
    ));
    let huge = Message::new(vec![0u8; 10_000]);
    assert!(matches!(
        spool.push(Some("t"), &huge).await,
        Err(SpoolError::RecordTooLarge { .. })
    ));
}

#[tokio::test]
async fn block_policy_waits_for_room_then_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let block = |timeout| {
        config(&dir)
            .max_records(1)
            .when_full(WhenFull::Block { timeout })
    };
    // A timeout far longer than the wait below, so a slow `remove` (an fsync
    // on a busy disk) still lands in time.
    let spool = Spool::open(block(Duration::from_secs(5))).await.unwrap();
    let first = spool.push(Some("t"), &msg(0, "k")).await.unwrap();

    // Room is made while the second write waits: it gets in.
    let waiting = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.push(Some("t"), &msg(1, "k")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the write waits for room");
    spool.remove(&[first]).await.unwrap();
    waiting.await.unwrap().unwrap();
    spool.close().await.unwrap();

    // No room is made: the write fails after the timeout.
    let spool = Spool::open(block(Duration::from_millis(300)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = spool.push(Some("t"), &msg(2, "k")).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        matches!(
            err,
            SpoolError::Full {
                waited: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        spool.peek(10).await.unwrap()[0].message.meta.message_id,
        "m-1"
    );
}

#[tokio::test]
async fn a_closed_spool_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    let other = spool.clone();
    spool.close().await.unwrap();
    assert!(matches!(
        other.push(Some("t"), &msg(0, "k")).await,
        Err(SpoolError::Closed { .. })
    ));
}

/// Finding: one unreadable row failed every read, so the relay never got
/// past it and the whole spool stalled.
#[tokio::test]
async fn an_unreadable_row_is_set_aside_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    for i in 0..3 {
        spool.push(Some("orders"), &msg(i, "k")).await.unwrap();
    }
    // Another writer breaks the middle record's headers.
    let conn = rusqlite::Connection::open(dir.path().join("t.spool")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "UPDATE records SET headers = '{not json' WHERE message_id = 'm-1'",
        [],
    )
    .unwrap();
    drop(conn);

    let records = spool.peek(10).await.unwrap();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.message.meta.message_id.as_str())
        .collect();
    assert_eq!(ids, ["m-0", "m-2"]);
    assert_eq!(spool.len(), 2);
    let refused = spool.refused(10).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].message_id, "m-1");
    assert_eq!(refused[0].reason, "unreadable");
    assert!(!refused[0].error.is_empty());
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_spool_of_schema_1_is_upgraded_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(&dir)).await.unwrap();
    spool.push(Some("orders"), &msg(0, "k")).await.unwrap();
    spool.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("t.spool")).unwrap();
    conn.execute_batch("DROP TABLE refused; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    assert!(
        Spool::read_refused(dir.path().join("t.spool"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let spool = Spool::open(config(&dir)).await.unwrap();
    assert_eq!(spool.len(), 1);
    assert!(spool.refused(10).await.unwrap().is_empty());
    spool.close().await.unwrap();
}
