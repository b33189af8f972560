//! Bad input through the real `order-worker` on Kafka (`--store
//! postgres-inbox --ledger …`): header values that are not UTF-8, null
//! header values and repeated header names; records without a message id;
//! forged routing and counting headers (`x-backstop-original-source` naming
//! another existing topic of the same group, with its own DLQ and retry
//! topics, `x-backstop-group` naming another group, `x-backstop-attempt`
//! past the maximum); a 1.2 MB poison record on a topic whose
//! `max.message.bytes` is 2 MB (its letter, body and headers, must fit the
//! DLQ and the producer). Each record is dead-lettered once with its reason in
//! this topic's DLQ or executed once; nothing arrives in the other topic,
//! its DLQ or its retry topics; the worker keeps running and handles an
//! order published after the corpus.
//!
//! Records are produced with rdkafka directly, so the test controls every
//! header byte. Takes `/tmp/backstop-kafka-outage.lock` (no broker restart
//! may happen meanwhile).

use std::collections::HashMap;
use std::time::Duration;

use backstop_kafka::rdkafka::ClientConfig;
use backstop_kafka::rdkafka::message::{Header, OwnedHeaders};
use backstop_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_tests::fault::read_dead_letters;
use backstop_tests::ledger::Ledger;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{KAFKA_OUTAGE_LOCK, outage_lock, poll, unique};

/// The size of the large poison record: over the worker's 1 MiB payload
/// limit and librdkafka's default `message.max.bytes`, under the topic's.
const HUGE: usize = 1_200_000;
/// The source topic's `max.message.bytes`.
const TOPIC_MAX: usize = 2_000_000;

/// One record and what must become of it.
struct Case {
    /// Also its `x-test-case` header.
    name: String,
    payload: Vec<u8>,
    /// Headers, in order (a `None` value is a null header).
    headers: Vec<(&'static str, Option<Vec<u8>>)>,
    /// Dead-lettered with this kind, or executed under this order id.
    expect: Result<String, &'static str>,
}

fn corpus(run: &str, decoy: &str) -> Vec<Case> {
    let order =
        |id: &str, amount: i64| format!(r#"{{"order_id":"{id}","amount":{amount}}}"#).into_bytes();
    let id = |name: &str| Some(format!("{run}-{name}").into_bytes());
    let binary = || {
        vec![
            ("x-bin", Some(vec![0xff, 0x00, 0xfe])),
            ("x-null", None),
            ("x-repeated", Some(b"1".to_vec())),
            ("x-repeated", Some(vec![0xc3, 0x28])),
        ]
    };
    let forged = || {
        vec![
            (
                "x-backstop-original-source",
                Some(decoy.as_bytes().to_vec()),
            ),
            ("x-backstop-group", Some(b"someone-else".to_vec())),
        ]
    };
    let with = |mut a: Vec<(&'static str, Option<Vec<u8>>)>, b| {
        a.extend(b);
        a
    };
    let case = |name: &str, payload, headers, expect| Case {
        name: format!("{run}-{name}"),
        payload,
        headers,
        expect,
    };
    vec![
        case(
            "binary-headers-poison",
            b"{".to_vec(),
            with(
                binary(),
                [("x-backstop-message-id", id("binary-headers-poison"))],
            ),
            Err("decode"),
        ),
        case(
            "binary-headers-valid",
            order(&format!("{run}-binary-headers-valid"), 1),
            binary(),
            Ok(format!("{run}-binary-headers-valid")),
        ),
        case("no-id-poison", b"[".to_vec(), Vec::new(), Err("decode")),
        case(
            "forged-origin-poison",
            b"{".to_vec(),
            forged(),
            Err("decode"),
        ),
        case(
            "forged-origin-invalid",
            order(&format!("{run}-forged-origin-invalid"), -1),
            forged(),
            Err("permanent"),
        ),
        case(
            "forged-attempt-valid",
            order(&format!("{run}-forged-attempt-valid"), 2),
            with(forged(), [("x-backstop-attempt", Some(b"99".to_vec()))]),
            Ok(format!("{run}-forged-attempt-valid")),
        ),
        case(
            "huge-poison",
            vec![b'x'; HUGE],
            vec![("x-backstop-message-id", id("huge-poison"))],
            Err("too_large"),
        ),
        case(
            "non-utf8-attempt-valid",
            order(&format!("{run}-non-utf8-attempt-valid"), 2),
            vec![("x-backstop-attempt", Some(vec![0xff, b'9']))],
            Ok(format!("{run}-non-utf8-attempt-valid")),
        ),
    ]
}

async fn produce(producer: &FutureProducer, topic: &str, case: &Case) {
    let mut headers = OwnedHeaders::new().insert(Header {
        key: "x-test-case",
        value: Some(case.name.as_bytes()),
    });
    for (key, value) in &case.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let record = FutureRecord::to(topic)
        .payload(&case.payload)
        .key(case.name.as_bytes())
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing {}: {e}", case.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kafka_records_settle_once_where_they_were_consumed() {
    let _lock = outage_lock(KAFKA_OUTAGE_LOCK).await.expect("outage lock");
    let started = std::time::Instant::now();
    backstop_tests::worker::binary();
    let brokers = backstop_kafka::brokers_from_env();
    let run = unique("bad_kafka");
    let topic = run.replace('_', "-");
    let decoy = format!("{topic}-decoy");
    let group = format!("{topic}-worker");
    let kafka = Kafka::new(brokers.clone(), group.clone());
    kafka
        .ensure_topics([
            TopicSpec::new(topic.clone())
                .partitions(4)
                .max_message_bytes(TOPIC_MAX),
            TopicSpec::new(decoy.clone()),
        ])
        .await
        .expect("create the topics");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let log = log_path(&run);
    let args: Vec<String> = [
        "--broker",
        "kafka",
        "--url",
        &brokers,
        "--source",
        &topic,
        "--group",
        &group,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--concurrency",
        "8",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut worker = Worker::spawn(&args, &log).expect("start the worker");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", TOPIC_MAX.to_string())
        .create()
        .expect("producer");

    let cases = corpus(&run, &decoy);
    for case in &cases {
        produce(&producer, &topic, case).await;
    }
    let sentinel = format!("{run}-sentinel");
    let after = Case {
        name: sentinel.clone(),
        payload: format!(r#"{{"order_id":"{sentinel}","amount":1}}"#).into_bytes(),
        headers: Vec::new(),
        expect: Ok(sentinel.clone()),
    };
    produce(&producer, &topic, &after).await;

    let mut must_execute: Vec<String> =
        cases.iter().filter_map(|c| c.expect.clone().ok()).collect();
    must_execute.push(sentinel.clone());
    let dead_expected = cases.iter().filter(|c| c.expect.is_err()).count();
    let executed = poll(
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let executions = ledger.executions().await.ok()?;
            must_execute
                .iter()
                .all(|id| executions.contains_key(id))
                .then_some(())
        },
    )
    .await;
    eprintln!("executed after {:.1?}", started.elapsed());
    let reader = Kafka::new(brokers.clone(), format!("{group}-dlq-reader"));
    let dead = read_dead_letters(
        reader
            .plain_source(&[kafka.dlq_topic(&topic).as_str()], 64)
            .expect("DLQ source"),
        dead_expected,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "{} dead letters after {:.1?}",
        dead.len(),
        started.elapsed()
    );
    let still_running = worker.exited().is_none();
    let status = worker.terminate(Duration::from_secs(30)).await;
    // A fresh connection if the first one was closed meanwhile (the shared
    // server may end idle connections).
    let executions = match ledger.executions().await {
        Ok(executions) => executions,
        Err(_) => Ledger::create(&run)
            .await
            .expect("reconnect to the ledger")
            .executions()
            .await
            .expect("read the ledger"),
    };
    let mut elsewhere = Vec::new();
    let admin = kafka.topics().expect("admin");
    let mut decoys = vec![decoy.clone(), kafka.dlq_topic(&decoy)];
    decoys.extend(kafka.retry_topics(&decoy));
    for t in &decoys {
        let end = admin.end_offsets(t).await.expect("end offsets");
        elsewhere.push((t.clone(), end.values().sum::<i64>()));
    }
    let _ = ledger.drop_schema().await;
    let tail = worker.log_tail(30);

    assert!(
        executed.is_some(),
        "the valid orders did not all run: {tail}"
    );
    assert!(still_running, "the worker stopped: {tail}");
    assert!(!tail.contains("panicked"), "the worker panicked: {tail}");
    assert!(
        elsewhere.iter().all(|(_, n)| *n == 0),
        "forged headers sent records elsewhere: {elsewhere:?}"
    );
    let by_case: HashMap<&str, Vec<_>> = dead.iter().fold(HashMap::new(), |mut m, d| {
        m.entry(d.headers.get("x-test-case").unwrap_or("?"))
            .or_default()
            .push(d);
        m
    });
    for case in &cases {
        match &case.expect {
            Err(kind) => {
                let letters = by_case
                    .get(case.name.as_str())
                    .unwrap_or_else(|| panic!("{} is not in the DLQ", case.name));
                assert_eq!(letters.len(), 1, "{} dead-lettered once", case.name);
                let letter = letters[0];
                assert_eq!(letter.kind.as_deref(), Some(*kind), "{}", case.name);
                assert_eq!(
                    letter.headers.get("x-backstop-original-source"),
                    Some(topic.as_str()),
                    "{}: the origin is where it was consumed",
                    case.name
                );
                assert_eq!(
                    letter.headers.get("x-backstop-group"),
                    Some(group.as_str()),
                    "{}: the group is the worker's",
                    case.name
                );
                assert!(!letter.message_id.is_empty(), "{} has an id", case.name);
                assert_eq!(
                    letter.payload_len,
                    case.payload.len(),
                    "{}: the letter keeps the whole body",
                    case.name
                );
            }
            Ok(id) => {
                assert_eq!(
                    executions.get(id).copied(),
                    Some(1),
                    "{} executed once",
                    case.name
                );
                assert!(
                    !by_case.contains_key(case.name.as_str()),
                    "{} was dead-lettered",
                    case.name
                );
            }
        }
    }
    // Binary, null and repeated headers reach the DLQ byte for byte, in order.
    let binary = by_case[format!("{run}-binary-headers-poison").as_str()][0];
    let producer: Vec<_> = binary
        .headers
        .iter_values()
        .filter(|(name, _)| !name.starts_with("x-backstop-") && *name != "x-test-case")
        .map(|(name, value)| (name, value.to_bytes().map(|b| b.to_vec())))
        .collect();
    assert_eq!(
        producer,
        [
            ("x-bin", Some(vec![0xff, 0x00, 0xfe])),
            ("x-null", None),
            ("x-repeated", Some(b"1".to_vec())),
            ("x-repeated", Some(vec![0xc3, 0x28])),
        ],
        "the letter's producer headers"
    );
    let no_id = by_case[format!("{run}-no-id-poison").as_str()][0];
    assert!(
        no_id.message_id.starts_with(&format!("{topic}/")),
        "an id-less record is identified by its position: {}",
        no_id.message_id
    );
    assert_eq!(executions.get(&sentinel).copied(), Some(1));
    assert_eq!(dead.len(), dead_expected, "one dead letter per bad record");
    let status = status.expect("the worker stops within 30 s of SIGTERM");
    assert!(status.success(), "the worker exited with {status}");
    let _ = std::fs::remove_file(&log);
}
