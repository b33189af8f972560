//! Closing and reopening the consumer while reading loses nothing.

mod common;

use std::time::Duration;

use backstop::runner::Source;
use common::{Seen, cleanup, next_within, publish_numbered, quorum, rabbit, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_across_repeated_close_and_reopen() {
    const N: usize = 5_000;
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "reopen").await;
    let run = unique("run");
    publish_numbered(&rabbit.publisher(), topology.queue(), &run, N).await;

    let seen = Seen::default();
    let mut sessions = 0;
    let mut left_unacked = 0;
    while seen.len() < N {
        sessions += 1;
        assert!(sessions < 200, "no progress: {} of {N} handled", seen.len());
        let mut source = rabbit.source(topology.queue(), 50).await.unwrap();
        // Read a varying stretch, ack it, and keep a few unacked when closing.
        let stretch = 150 + (sessions * 97) % 400;
        let mut held = Vec::new();
        for i in 0..stretch {
            let Some(delivery) = next_within(&mut source, Duration::from_secs(2)).await else {
                break;
            };
            if i % 50 == 49 {
                held.push(delivery);
                continue;
            }
            seen.insert(&delivery.message().meta.message_id);
            delivery.ack().await.unwrap();
        }
        left_unacked += held.len();
        source.close().await;
        // Settling after the close fails: the broker has them back.
        for delivery in held {
            assert!(delivery.ack().await.is_err(), "no ack on a closed channel");
        }
    }
    assert!(
        sessions >= 5,
        "the consumer was reopened repeatedly ({sessions} sessions)"
    );
    assert!(left_unacked > 0);
    assert!(seen.missing(&run, N).is_empty());
    assert_eq!(rabbit.message_count(topology.queue()).await.unwrap(), 0);
    cleanup(&rabbit, &topology).await;
}
