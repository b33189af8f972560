//! The lag a source reports per partition and the depth of its DLQ, read
//! by a process-wide debugging recorder (a test binary of its own: the
//! poll thread records from its own thread).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use backstop::Message;
use backstop::metrics::{DLQ_DEPTH, KAFKA_LAG, KAFKA_OLDEST_UNFINISHED, RETRY_DEPTH};
use backstop::runner::Source;
use backstop_kafka::{TopicSpec, dlq_state_topic};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Held by each test for its whole length: a snapshot zeroes the counters
/// and gauges, so one test's snapshot must not take another's counts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process-wide recorder, installed once for every test of this binary.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The gauge `name` of `source` and `group` that carries `labels`, in `snapshot`.
fn find(
    snapshot: &Snapshot,
    name: &str,
    source: &str,
    group: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    snapshot
        .iter()
        .find(|(k, _, _, _)| {
            let has = |key: &str, value: &str| {
                k.key()
                    .labels()
                    .any(|l| l.key() == key && l.value() == value)
            };
            k.key().name() == name
                && has("source", source)
                && has("group", group)
                && labels.iter().all(|(key, value)| has(key, value))
        })
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => Some(g.into_inner()),
            _ => None,
        })
}

/// The gauge `name` of `source` and `group` that carries `labels`, from a
/// new snapshot (which zeroes every gauge of the recorder: the pollers set
/// them again on their next interval).
fn gauge(name: &str, source: &str, group: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(
        &recorder().snapshot().into_vec(),
        name,
        source,
        group,
        labels,
    )
}

/// Waits until the gauge reads `expected` (at most 15 s); panics with the
/// last reading if it never does.
async fn reaches(name: &str, source: &str, group: &str, labels: &[(&str, &str)], expected: f64) {
    let read = || gauge(name, source, group, labels);
    let reached = eventually(Duration::from_secs(15), || read() == Some(expected)).await;
    assert!(reached, "{name} {labels:?}: {:?}, not {expected}", read());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_unfinished_records_until_they_are_done() {
    let _serial = SERIAL.lock().await;
    recorder();
    let group = unique("g");
    let kafka = kafka(&group).configure(|c| c.metrics_interval = Duration::from_millis(100));
    let topic = topic(&kafka, "lag", 1).await;
    let sent = messages("lag", 30, 30);
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;

    // Ten handed out and held (a blocked handler), twenty waiting behind them.
    let mut source = kafka.source(&[&topic], 10).unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(
            next(&mut source, Duration::from_secs(30))
                .await
                .expect("a delivery"),
        );
    }
    // Partition 0 of the main topic (the retry topics have gauges of their own).
    let partition_0 = [("topic", topic.as_str()), ("partition", "0")];
    let oldest = || gauge(KAFKA_OLDEST_UNFINISHED, &topic, &group, &partition_0);
    // Every record is unfinished.
    reaches(KAFKA_LAG, &topic, &group, &partition_0, 30.0).await;
    assert!(
        eventually(Duration::from_secs(10), || oldest()
            .is_some_and(|s| s > 0.0))
        .await,
        "the first offset has waited: {:?}",
        oldest()
    );

    for delivery in held {
        delivery.ack().await.unwrap();
    }
    let rest = ids(&sent[10..]);
    let seen = drain(&mut source, &rest, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), rest.len());
    // A snapshot zeroes the recorder's gauges, so a 0 proves something only
    // once the poll thread had a few intervals to set another value.
    reaches(KAFKA_LAG, &topic, &group, &partition_0, 0.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshot = recorder().snapshot().into_vec();
    let both = [KAFKA_LAG, KAFKA_OLDEST_UNFINISHED]
        .map(|name| find(&snapshot, name, &topic, &group, &partition_0));
    assert_eq!(both, [Some(0.0), Some(0.0)], "all done");
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_depth_counts_letters_not_yet_redriven_and_retry_depth_waiting_copies() {
    let _serial = SERIAL.lock().await;
    recorder();
    let group = unique("g");
    let kafka = kafka(&group).configure(|c| c.metrics_interval = Duration::from_millis(100));
    let topic = topic(&kafka, "dlqd", 1).await;
    let dlq = kafka.dlq_topic(&topic);
    let state = dlq_state_topic(&dlq);
    kafka
        .topics()
        .unwrap()
        .create(&[TopicSpec::new(state.clone()).config("cleanup.policy", "compact")])
        .await
        .unwrap();
    let letters = messages("letter", 5, 5);
    let publisher = kafka.publisher().unwrap();
    publish_in_order(&publisher, &dlq, &letters).await;

    let retry = kafka.retry_topics(&topic)[0].clone();
    let tier = retry.rsplit('.').next().unwrap().to_owned();
    publish_in_order(&publisher, &retry, &messages("copy", 3, 3)).await;

    let mut source = kafka.source(&[&topic], 4).unwrap();
    // Three copies wait in the first tier; five letters in the DLQ.
    reaches(RETRY_DEPTH, &topic, &group, &[("tier", &tier)], 3.0).await;
    reaches(DLQ_DEPTH, &topic, &group, &[("dlq", &dlq)], 5.0).await;
    // Two redriven: `backstop dlq replay` records each in the state topic,
    // keyed `<message id>@<replayed>`, once its copy is confirmed.
    let records: Vec<Message> = letters[..2]
        .iter()
        .map(|l| {
            Message::new(r#"{"state":"replayed"}"#).with_key(format!("{}@0", l.meta.message_id))
        })
        .collect();
    publish_in_order(&publisher, &state, &records).await;
    // Three letters left.
    reaches(DLQ_DEPTH, &topic, &group, &[("dlq", &dlq)], 3.0).await;
    source.close().await;
}

/// Ordered retries' metrics of `group` in a new snapshot (which zeroes
/// counters and gauges): `(name, event label, value)`.
fn parked_metrics(group: &str) -> Vec<(String, Option<String>, f64)> {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name().starts_with("backstop_kafka_parked")
                && k.key()
                    .labels()
                    .any(|l| l.key() == "group" && l.value() == group)
        })
        .filter_map(|(k, _, _, v)| {
            let event = k
                .key()
                .labels()
                .find(|l| l.key() == "event")
                .map(|l| l.value().to_owned());
            let value = match v {
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Counter(c) => c as f64,
                DebugValue::Histogram(_) => return None,
            };
            Some((k.key().name().to_owned(), event, value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retries_count_what_they_park_and_show_the_parked_keys() {
    let _serial = SERIAL.lock().await;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use backstop::{Context, HandlerError, RetryPolicy, StackBuilder, handler_fn};

    recorder();
    let group = unique("pm");
    let kafka = kafka(&group)
        .configure(|c| c.metrics_interval = Duration::from_millis(100))
        .exactly_once("w1")
        .ordered_retries();
    let topic = topic(&kafka, "pm", 1).await;
    let sent: Vec<Message> = (0..3)
        .map(|i| {
            Message::new(format!(r#"{{"n":{i}}}"#))
                .with_message_id(format!("{topic}-{i}"))
                .with_key("K".to_owned())
        })
        .collect();
    publish_in_order(&kafka.publisher().unwrap(), &topic, &sent).await;
    // K's first message fails into the tiers for as long as the test runs.
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(kafka.dead_letter_sink().unwrap()))
        .retry(RetryPolicy::retries(50).in_process_limit(Duration::from_millis(100)))
        .retry_sink(Arc::new(kafka.retry_sink().unwrap()))
        .build(handler_fn(
            |v: serde_json::Value, _ctx: Context| async move {
                if v["n"] == 0 {
                    return Err(
                        HandlerError::transient("later").retry_after(Duration::from_secs(1))
                    );
                }
                Ok(())
            },
        ));
    let worker = run(kafka.source(&[&topic], 8).unwrap(), stack, 8);
    let mut counted: BTreeMap<String, f64> = BTreeMap::new();
    let mut keys = None;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        for (name, event, value) in parked_metrics(&group) {
            match event {
                Some(event) => *counted.entry(event).or_default() += value,
                None if name == "backstop_kafka_parked_keys" && value > 0.0 => keys = Some(value),
                None => {}
            }
        }
        if counted.get("follower") == Some(&2.0) && keys == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    assert_eq!(counted.get("follower"), Some(&2.0), "{counted:?}");
    assert!(counted.get("head") >= Some(&1.0), "{counted:?}");
    assert_eq!(counted.get("released"), None, "nothing ran behind the head");
    assert_eq!(keys, Some(1.0), "one key parked");
}
