//! A batch handler on Kafka: 40 records over 4 partitions go to the
//! handler in batches; one poison record among them is dead-lettered alone
//! (kind `permanent`), the other 39 are handled once each, and every
//! partition's offset is committed past its records.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::batch::{BatchConfig, HandleBatch};
use backstop::{Context, HandlerError, StackBuilder, wire};
use common::{committed_eventually, kafka, messages, publish_all, read_topic, run, topic, unique};

/// A bulk writer: records each batch (message ids); `bad` fails for good.
struct Bulk {
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    bad: String,
}

impl HandleBatch<serde_json::Value> for Bulk {
    type Error = HandlerError;
    async fn handle_batch(
        &self,
        batch: Vec<(serde_json::Value, Context)>,
    ) -> Vec<Result<(), HandlerError>> {
        self.batches.lock().unwrap().push(
            batch
                .iter()
                .map(|(_, c)| c.message_id().to_owned())
                .collect(),
        );
        batch
            .iter()
            .map(|(_, c)| {
                if c.message_id() == self.bad {
                    Err(HandlerError::permanent("row violates a check constraint"))
                } else {
                    Ok(())
                }
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_in_a_batch_is_dead_lettered_alone() {
    let kafka = kafka(&unique("g"));
    let topic = topic(&kafka, "batch", 4).await;
    let run_id = unique("b");
    let records = messages(&run_id, 40, 40);
    publish_all(&kafka.publisher().unwrap(), &topic, &records).await;
    let bad = format!("{run_id}-13");

    let batches = Arc::new(Mutex::new(Vec::new()));
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .build_batched(
            Bulk {
                batches: Arc::clone(&batches),
                bad: bad.clone(),
            },
            BatchConfig::new(16, Duration::from_millis(50)),
        );
    let worker = run(kafka.source(&[&topic], 32).unwrap(), stack, 32);
    // Every partition committed past all of its records.
    let ends: BTreeMap<i32, i64> = kafka.topics().unwrap().end_offsets(&topic).await.unwrap();
    let committed = committed_eventually(&kafka, &topic, &ends, Duration::from_secs(60)).await;
    let reached: BTreeMap<i32, i64> = committed
        .iter()
        .filter_map(|(p, o)| o.map(|o| (*p, o)))
        .collect();
    assert_eq!(reached, ends, "every record settled");
    let summary = worker.stop().await;
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (39, 1),
        "{summary}"
    );

    let batches = batches.lock().unwrap().clone();
    let mut ids: Vec<String> = batches.concat();
    assert_eq!(ids.len(), 40, "each record written once: {batches:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert!(
        batches.len() < 40,
        "written in batches: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let letters = read_topic(&kafka, &kafka.dlq_topic(&topic), 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header(wire::MESSAGE_ID), Some(bad.as_str()));
    assert_eq!(letters[0].header(wire::ERROR_KIND), Some("permanent"));
}
