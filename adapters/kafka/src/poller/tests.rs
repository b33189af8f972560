//! Unit tests of the poll thread: against the real Kafka, and of its pure
//! helpers.

use std::time::Duration;

use backstop::publish::Publisher as _;
use backstop::runner::RunError;
use backstop::{Runner, StackBuilder, handler_fn, memory::MemoryBroker};

use super::PANIC_IN_POLL;
use crate::transaction::HANG_IN_SEND_OFFSETS;
use crate::{Kafka, TopicSpec, brokers_from_env};

/// Runs a no-op stack over `source` until it stops, within `within`;
/// the fatal source error it stopped with.
async fn fatal_error_of(
    source: crate::KafkaSource,
    sink: impl backstop::dead_letter::DeadLetterSink + 'static,
    within: Duration,
) -> backstop::runner::SourceError {
    let stack = StackBuilder::<serde_json::Value>::new(std::sync::Arc::new(sink)).build(
        handler_fn(|_: serde_json::Value, _| async { Ok::<(), backstop::HandlerError>(()) }),
    );
    let result = tokio::time::timeout(within, Runner::new(source, stack).run())
        .await
        .expect("the runner hangs");
    let Err(RunError::Source { source, .. }) = result else {
        panic!("the runner ended without the source's error: {result:?}");
    };
    assert!(source.is_fatal(), "{source}");
    source
}

/// `prefix` with this moment's nanoseconds: a fresh group or topic name.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_poll_thread_stops_the_runner_with_a_clear_error() {
    let group = unique("bt-dead-poll");
    let kafka = Kafka::new(brokers_from_env(), group.clone());
    PANIC_IN_POLL.lock().unwrap().push(group);
    let source = fatal_error_of(
        kafka.plain_source(&["bt-dead-poll"], 4).unwrap(),
        MemoryBroker::new().dead_letter_sink(),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        source.to_string().contains("consumer thread of group"),
        "{source}"
    );
}

/// librdkafka's `send_offsets_to_transaction` can block for good when
/// the group coordinator is lost (confluentinc/librdkafka#5456): the
/// watchdog stops the source with an error naming the call, the runner
/// ends without waiting for the blocked thread, and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_call_that_never_returns_stops_the_runner_naming_it() {
    let topic = unique("bt-stuck-txn");
    let group = format!("{topic}-g");
    let kafka = Kafka::new(brokers_from_env(), group.clone())
        .exactly_once("w1")
        .configure(|c| {
            if let Some(eo) = c.exactly_once.as_mut() {
                eo.call_timeout = Duration::from_secs(1);
            }
        });
    kafka
        .ensure_topics([TopicSpec::new(topic.clone())])
        .await
        .unwrap();
    let publisher = kafka.publisher().unwrap();
    publisher
        .publish(&topic, &backstop::Message::new(b"{}".to_vec()))
        .await
        .unwrap();
    HANG_IN_SEND_OFFSETS.lock().unwrap().push(group.clone());
    let started = std::time::Instant::now();
    let source = fatal_error_of(
        kafka.source(&[&topic], 4).unwrap(),
        kafka.dead_letter_sink().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    let text = source.to_string();
    assert!(text.contains("TRANSACTIONAL_CALL_STUCK"), "{text}");
    assert!(text.contains("send_offsets_to_transaction"), "{text}");
    // Blocked past 1 s + 1 s, and the close did not wait out the
    // consumer's session for the blocked thread.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    // The transaction never committed: the group has no offset.
    let committed = kafka.committed_offsets(&topic).await.unwrap();
    assert!(committed.values().all(Option::is_none), "{committed:?}");
}

#[test]
fn the_settled_messages_kept_for_the_next_batch_are_the_newest_within_a_batchs_bounds() {
    use std::sync::Arc;

    use super::{BATCH, BATCH_BYTES, keep_for_next_batch};

    let of = |bytes: usize, id: usize| {
        Arc::new(backstop::Message::new(vec![0u8; bytes]).with_message_id(id.to_string()))
    };
    let ids = |freed: &[Arc<backstop::Message>]| -> Vec<String> {
        freed.iter().map(|m| m.meta.message_id.clone()).collect()
    };

    // Small messages: the newest BATCH, in their order.
    let mut freed: Vec<_> = (0..BATCH + 10).map(|i| of(8, i)).collect();
    keep_for_next_batch(&mut freed, false);
    assert_eq!(freed.len(), BATCH);
    assert_eq!(ids(&freed[..1]), ["10"], "the oldest ten are dropped");
    assert_eq!(ids(&freed[BATCH - 1..]), [(BATCH + 9).to_string()]);

    // Large messages: no more than BATCH_BYTES of messages, as the
    // budgets count them (a quarter of it each, with their bookkeeping).
    let big = BATCH_BYTES / 4 - 1024;
    let mut freed: Vec<_> = (0..10).map(|i| of(big, i)).collect();
    keep_for_next_batch(&mut freed, false);
    assert_eq!(ids(&freed), ["6", "7", "8", "9"]);
    // Their keys and headers count too.
    let mut freed: Vec<_> = (0..10)
        .map(|i| {
            let mut m = (*of(big - 2048, i)).clone().with_key(vec![0u8; 2048]);
            m.headers.insert("h".to_owned(), "x".repeat(2048));
            Arc::new(m)
        })
        .collect();
    keep_for_next_batch(&mut freed, false);
    assert_eq!(
        ids(&freed),
        ["7", "8", "9"],
        "payload alone would keep four"
    );

    // Idle: nothing is kept.
    keep_for_next_batch(&mut freed, true);
    assert!(freed.is_empty());
}
