//! A batch handler on RabbitMQ: 30 messages in flight go to the handler in
//! batches; one poison message among them is dead-lettered alone (kind
//! `permanent`), the other 29 are handled once each and acked.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::batch::{BatchConfig, HandleBatch};
use backstop::{CancellationToken, Context, HandlerError, Message, Runner, StackBuilder, wire};
use common::{cleanup, count_reaches, drain, eventually, quorum, rabbit};

/// A bulk writer: records each batch; the row "bad" violates a constraint.
struct Bulk(Arc<Mutex<Vec<Vec<String>>>>);

impl HandleBatch<String> for Bulk {
    type Error = HandlerError;
    async fn handle_batch(&self, batch: Vec<(String, Context)>) -> Vec<Result<(), HandlerError>> {
        self.0
            .lock()
            .unwrap()
            .push(batch.iter().map(|(row, _)| row.clone()).collect());
        batch
            .iter()
            .map(|(row, _)| match row.as_str() {
                "bad" => Err(HandlerError::permanent("row violates a check constraint")),
                _ => Ok(()),
            })
            .collect()
    }
}

#[tokio::test]
async fn a_poison_message_in_a_batch_is_dead_lettered_alone() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "batch").await;
    let queue = topology.queue().to_owned();
    let publisher = rabbit.publisher();
    for i in 0..30 {
        let row = if i == 7 {
            "bad".to_owned()
        } else {
            format!("row-{i}")
        };
        publisher
            .publish_to_queue(&queue, &Message::new(row).with_message_id(format!("m-{i}")))
            .await
            .unwrap();
    }
    publisher.close().await;

    let batches = Arc::new(Mutex::new(Vec::new()));
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).build_batched(
        Bulk(Arc::clone(&batches)),
        // A linger long enough that a pause in the broker's burst of
        // deliveries (a loaded machine) does not cut batches short.
        BatchConfig::new(16, Duration::from_millis(500)),
    );
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Runner::new(rabbit.source(&queue, 32).await.unwrap(), stack)
            .concurrency(32)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    assert!(
        count_reaches(&rabbit, &topology.dlq(), 1).await,
        "the letter"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 30
        })
        .await
    );
    shutdown.cancel();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (29, 1),
        "{summary}"
    );
    assert_eq!(rabbit.message_count(&queue).await.unwrap(), 0, "all acked");

    let batches = batches.lock().unwrap().clone();
    let mut rows: Vec<String> = batches.concat();
    assert_eq!(rows.len(), 30, "each row written once: {batches:?}");
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), 30);
    assert!(
        batches.len() <= 6,
        "written in batches: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(batches.iter().all(|b| b.len() <= 16));

    let letters = drain(&rabbit, &topology.dlq(), Duration::from_secs(1)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(wire::MESSAGE_ID), Some("m-7"));
    assert_eq!(letters[0].header(wire::ERROR_KIND), Some("permanent"));
    cleanup(&rabbit, &topology).await;
}
