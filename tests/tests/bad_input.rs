//! A corpus of bad input through the real `order-worker` on RabbitMQ
//! (`--store postgres-inbox --ledger … --max-payload-bytes 65536`): empty
//! and non-UTF-8 bodies, JSON of the wrong shape, bodies over the limit,
//! header values that are not strings, missing message ids and a 10 KB
//! order id; AMQP properties no adapter expects (a `timestamp` of 2^64−1 or
//! 2^63, as Java and .NET producers write dates before 1970, a priority of
//! 255, odd content types); forged routing and counting headers
//! (`x-backstop-original-source` naming another existing queue,
//! `x-backstop-attempt` past the maximum). Each bad message is dead-lettered with its reason
//! (`x-backstop-error-kind`, non-empty `x-backstop-error`) or, where it is a
//! valid order after all, executed exactly once; the worker keeps running
//! and handles an order published after the corpus; its memory stays
//! bounded; nothing arrives in the other queue or its DLQ.
//!
//! The oversized bodies are 16 of 1 MB (`BACKSTOP_BAD_INPUT_LARGE_BYTES`
//! changes their size) and one of 10 MB.
//!
//! Messages are published with lapin directly, so the test controls every
//! AMQP property (no message id, integer and boolean header values).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backstop::headers::{AmqpValue, HeaderValue};
use backstop_rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use backstop_rabbitmq::lapin::{BasicProperties, Channel, Confirmation};
use backstop_rabbitmq::{RabbitMq, Topology, url_from_env};
use backstop_tests::fault::read_dead_letters;
use backstop_tests::ledger::Ledger;
use backstop_tests::worker::{Worker, log_path};
use backstop_tests::{env_usize, poll, unique};

/// The issue's oversized body: 10 MB, far over the worker's 64 KiB limit.
const TEN_MB: usize = 10 * 1024 * 1024;

/// One bad message and what must become of it.
struct Case {
    /// Also its `x-test-case` header.
    name: String,
    payload: Vec<u8>,
    /// The AMQP message id property, if any.
    message_id: Option<String>,
    /// Extra header values (the test case header is added).
    headers: Vec<(&'static str, AMQPValue)>,
    /// Extra AMQP properties.
    properties: Props,
    expect: Expect,
}

/// Sets AMQP properties on a case's message.
type Props = fn(BasicProperties) -> BasicProperties;

enum Expect {
    /// Dead-lettered with this error kind.
    Dead(&'static str),
    /// Executed once, under this order id.
    Executed(String),
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// The queue (with a DLQ) that forged routing headers name: nothing may arrive there.
fn decoy(queue: &str) -> String {
    format!("{queue}-decoy")
}

/// Id-less messages, each published twice (identical body and properties,
/// so one digest id): `orders` valid orders (executed once each) and
/// `poison` bodies that cannot be decoded (one dead letter each: the two
/// copies of one body are one message).
fn idless_duplicates(run: &str, orders: usize, poison: usize) -> Vec<Case> {
    let idless = |name: String, payload: Vec<u8>, expect: Expect| Case {
        name,
        payload,
        message_id: None,
        headers: Vec::new(),
        properties: |p| p,
        expect,
    };
    let mut cases = Vec::new();
    for i in 0..orders {
        let id = format!("{run}-idless-{i}");
        let body = format!(r#"{{"order_id":"{id}","amount":{}}}"#, i + 1).into_bytes();
        cases.push(idless(id.clone(), body, Expect::Executed(id)));
    }
    for i in 0..poison {
        let name = format!("{run}-idless-poison-{i}");
        let body = format!(r#"{{"order_id": {i}"#).into_bytes();
        cases.push(idless(name, body, Expect::Dead("decode")));
    }
    cases
}

fn corpus(run: &str, large: usize) -> Vec<Case> {
    let case = |name: &str, payload: Vec<u8>, expect: Expect| Case {
        name: format!("{run}-{name}"),
        payload,
        message_id: Some(format!("{run}-{name}")),
        headers: Vec::new(),
        properties: |p| p,
        expect,
    };
    let order =
        |id: &str, amount: i64| format!(r#"{{"order_id":"{id}","amount":{amount}}}"#).into_bytes();
    let mut cases = vec![
        case("empty", Vec::new(), Expect::Dead("decode")),
        case(
            "invalid-utf8",
            vec![0xff, 0xfe, b'{', 0xc3, 0x28, 0x80],
            Expect::Dead("decode"),
        ),
        case(
            "utf8-in-json-string",
            [
                b"{\"order_id\":\"".as_slice(),
                &[0xff, 0xfe],
                b"\",\"amount\":1}",
            ]
            .concat(),
            Expect::Dead("decode"),
        ),
        case("json-array", b"[1,2,3]".to_vec(), Expect::Dead("decode")),
        case("json-null", b"null".to_vec(), Expect::Dead("decode")),
        case(
            "wrong-field-types",
            br#"{"order_id":5,"amount":"ten"}"#.to_vec(),
            Expect::Dead("decode"),
        ),
        case(
            "missing-amount",
            format!(r#"{{"order_id":"{run}-x"}}"#).into_bytes(),
            Expect::Dead("decode"),
        ),
        case(
            "truncated-json",
            br#"{"order_id":"a","amo"#.to_vec(),
            Expect::Dead("decode"),
        ),
        // 20,000 levels of nesting in a field the order ignores: decoded
        // without blowing the stack, and executed.
        case(
            "deep-nesting",
            [
                br#"{"pad":"#.as_slice(),
                &[b'['; 20_000],
                &[b']'; 20_000],
                format!(r#","order_id":"{run}-deep","amount":1}}"#).as_bytes(),
            ]
            .concat(),
            Expect::Executed(format!("{run}-deep")),
        ),
    ];
    // Valid JSON, just too large: the limit, not the decoder, must catch it.
    let big = |name: &str, len: usize| {
        let mut body = format!(r#"{{"order_id":"{run}-{name}","amount":1,"pad":""#).into_bytes();
        body.resize(len.saturating_sub(2).max(body.len()), b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    for i in 0..16 {
        let name = format!("too-large-{i}");
        cases.push(case(&name, big(&name, large), Expect::Dead("too_large")));
    }
    cases.push(case(
        "ten-megabytes",
        big("ten-megabytes", TEN_MB),
        Expect::Dead("too_large"),
    ));
    // Header values that are not strings, on a poison body and on a valid order.
    let odd_headers = || {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("nested"), AMQPValue::LongLongInt(7));
        vec![
            ("x-int", AMQPValue::LongLongInt(42)),
            ("x-bool", AMQPValue::Boolean(true)),
            ("x-float", AMQPValue::Double(1.5)),
            ("x-table", AMQPValue::FieldTable(table)),
            ("x-void", AMQPValue::Void),
            (
                "x-bytes",
                AMQPValue::ByteArray(vec![0u8, 159, 146, 150].into()),
            ),
        ]
    };
    let mut poison = case(
        "header-types-poison",
        b"not json".to_vec(),
        Expect::Dead("decode"),
    );
    poison.headers = odd_headers();
    cases.push(poison);
    let id = format!("{run}-header-types-valid");
    let mut valid = case("header-types-valid", order(&id, 3), Expect::Executed(id));
    valid.headers = odd_headers();
    cases.push(valid);
    // backstop's attempt header as an AMQP integer, past the maximum: a
    // producer's count never skips the run.
    let id = format!("{run}-attempt-int");
    let mut attempt = case("attempt-int", order(&id, 3), Expect::Executed(id));
    attempt.headers = vec![("x-backstop-attempt", AMQPValue::LongLongInt(99))];
    cases.push(attempt);
    let id = format!("{run}-attempt-text");
    let mut attempt = case("attempt-text", order(&id, 3), Expect::Executed(id));
    attempt.headers = vec![("x-backstop-attempt", text("4294967295"))];
    cases.push(attempt);
    // Forged routing: the letter goes to this queue's DLQ, never the decoy's.
    let queue = run.replace('_', "-");
    let mut forged = case("forged-origin", b"{".to_vec(), Expect::Dead("decode"));
    forged.headers = vec![
        ("x-backstop-original-source", text(&decoy(&queue))),
        ("x-backstop-group", text("someone-else")),
    ];
    cases.push(forged);
    // AMQP properties: timestamps before 1970 (2^64-1, 2^63 as u64), the
    // largest priority, an odd content type; on a poison body and on an order.
    let props: [(&str, Props); 3] = [
        ("timestamp-max", |p| p.with_timestamp(u64::MAX)),
        ("timestamp-2-63", |p| {
            p.with_timestamp(1 << 63)
                .with_priority(255)
                .with_content_type("application/\u{0}x".into())
        }),
        ("timestamp-1969", |p| {
            p.with_timestamp((-86_400i64) as u64)
                .with_content_encoding("gzip".into())
                .with_correlation_id("c".repeat(255).as_str().into())
        }),
    ];
    for (name, properties) in props {
        let mut poison = case(
            &format!("{name}-poison"),
            b"[".to_vec(),
            Expect::Dead("decode"),
        );
        poison.properties = properties;
        cases.push(poison);
        let id = format!("{run}-{name}-valid");
        let mut valid = case(
            &format!("{name}-valid"),
            order(&id, 2),
            Expect::Executed(id),
        );
        valid.properties = properties;
        cases.push(valid);
    }
    let mut attempt = case(
        "attempt-bool",
        order(&format!("{run}-attempt-bool"), 3),
        Expect::Executed(format!("{run}-attempt-bool")),
    );
    attempt.headers = vec![("x-backstop-attempt", AMQPValue::Boolean(true))];
    cases.push(attempt);
    // No message id at all (property and header): a digest of the body and
    // properties stands in, the same on every redelivery.
    let mut no_id = case("no-id-poison", b"{".to_vec(), Expect::Dead("decode"));
    no_id.message_id = None;
    cases.push(no_id);
    let id = format!("{run}-no-id-valid");
    let mut no_id = case("no-id-valid", order(&id, 4), Expect::Executed(id));
    no_id.message_id = None;
    cases.push(no_id);
    // A 10 KB order id (the idempotency key): stored hashed, executed once.
    let huge: String = format!("{run}-huge-") + &"k".repeat(10 * 1024);
    cases.push(case(
        "huge-key-valid",
        order(&huge, 5),
        Expect::Executed(huge.clone()),
    ));
    let huge_invalid = format!("{huge}-neg");
    cases.push(case(
        "huge-key-invalid",
        order(&huge_invalid, -5),
        Expect::Dead("permanent"),
    ));
    cases
}

/// Publishes `case` to `queue` and waits for the confirm.
async fn publish(channel: &Channel, queue: &str, case: &Case) {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-test-case"), text(&case.name));
    for (name, value) in &case.headers {
        headers.insert(ShortString::from(*name), value.clone());
    }
    let mut properties = (case.properties)(
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers),
    );
    if let Some(id) = &case.message_id {
        properties = properties.with_message_id(ShortString::from(id.as_str()));
    }
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &case.payload,
            properties,
        )
        .await
        .expect("publish");
    match confirm.await.expect("confirm") {
        Confirmation::Ack(None) => {}
        other => panic!("{} not confirmed: {other:?}", case.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_its_reason_and_the_worker_carries_on() {
    let large = env_usize("BACKSTOP_BAD_INPUT_LARGE_BYTES", 1024 * 1024);
    let started = Instant::now();
    backstop_tests::worker::binary();
    let run = unique("bad_input");
    let queue = run.replace('_', "-");
    let ledger = Ledger::create(&run).await.expect("ledger schema");
    let log = log_path(&run);
    let args: Vec<String> = [
        "--broker",
        "rabbitmq",
        "--url",
        &url_from_env(),
        "--source",
        &queue,
        "--store",
        "postgres-inbox",
        "--ledger",
        ledger.url(),
        "--max-payload-bytes",
        "65536",
        "--concurrency",
        "8",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let rabbit = RabbitMq::connect(url_from_env()).await.expect("connect");
    let mut worker = Worker::spawn(&args, &log).expect("start the worker");
    let declared = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { rabbit.message_count(&queue).await.ok() },
    )
    .await;
    assert!(
        declared.is_some(),
        "the worker did not declare {queue}: {}",
        worker.log_tail(20)
    );

    let channel = rabbit.channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions { nowait: false })
        .await
        .expect("confirm mode");
    // Another existing queue with a DLQ, named by the forged routing headers.
    let decoy = decoy(&queue);
    for q in [decoy.clone(), Topology::quorum(decoy.as_str()).dlq()] {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the decoy queues");
    }
    // A warm-up order, so the baseline RSS is that of a working worker.
    let warm = format!("{run}-warm-up");
    let mut warm_up = corpus(&run, large).pop().expect("a case");
    warm_up.name = warm.clone();
    warm_up.message_id = Some(warm.clone());
    warm_up.payload = format!(r#"{{"order_id":"{warm}","amount":1}}"#).into_bytes();
    warm_up.expect = Expect::Executed(warm.clone());
    publish(&channel, &queue, &warm_up).await;
    let warmed = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            ledger
                .executions()
                .await
                .ok()
                .filter(|e| e.contains_key(&warm))
                .map(|_| ())
        },
    )
    .await;
    assert!(
        warmed.is_some(),
        "the warm-up order was not handled: {}",
        worker.log_tail(20)
    );
    let rss_before = worker.rss_kib().expect("VmRSS");

    let cases = corpus(&run, large);
    for case in &cases {
        publish(&channel, &queue, case).await;
    }
    // An order after the corpus: the worker must still be handling.
    let sentinel = format!("{run}-sentinel");
    let mut after = corpus(&run, large).pop().expect("a case");
    after.name = sentinel.clone();
    after.message_id = Some(sentinel.clone());
    after.payload = format!(r#"{{"order_id":"{sentinel}","amount":1}}"#).into_bytes();
    publish(&channel, &queue, &after).await;

    let dead_expected = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Dead(_)))
        .count();
    let mut must_execute: Vec<String> = cases
        .iter()
        .filter_map(|c| match &c.expect {
            Expect::Executed(id) => Some(id.clone()),
            Expect::Dead(_) => None,
        })
        .collect();
    must_execute.push(sentinel.clone());
    let dlq = Topology::quorum(queue.as_str()).dlq();
    let settled = poll(
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let executions = ledger.executions().await.ok()?;
            let dead = rabbit.message_count(&dlq).await.ok()? as usize;
            let queued = rabbit.message_count(&queue).await.ok()?;
            (must_execute.iter().all(|id| executions.contains_key(id))
                && dead >= dead_expected
                && queued == 0)
                .then_some(())
        },
    )
    .await;
    let rss_after = worker.rss_kib().unwrap_or(u64::MAX);
    let decoy_dlq = Topology::quorum(decoy.as_str()).dlq();
    let mut decoy_counts = Vec::new();
    for q in [&decoy, &decoy_dlq] {
        decoy_counts.push(rabbit.message_count(q).await.unwrap_or(u32::MAX));
    }
    let mut still_running = worker.exited().is_none();

    // Id-less duplicates across a kill -9: every message twice, the worker
    // killed while they are in flight and started again. A digest id that
    // changed per delivery would run the attempt counting and the letters
    // of each copy apart (a second letter for one body).
    let idless = idless_duplicates(&run, 20, 10);
    for case in idless.iter().chain(idless.iter()) {
        publish(&channel, &queue, case).await;
    }
    worker.kill9().expect("kill -9 the worker");
    let mut worker = Worker::spawn(&args, &log).expect("start the worker again");
    let idless_dead = idless
        .iter()
        .filter(|c| matches!(c.expect, Expect::Dead(_)))
        .count();
    let idless_orders: Vec<String> = idless
        .iter()
        .filter_map(|c| match &c.expect {
            Expect::Executed(id) => Some(id.clone()),
            Expect::Dead(_) => None,
        })
        .collect();
    let dead_expected = dead_expected + idless_dead;
    let idless_settled = poll(
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let executions = ledger.executions().await.ok()?;
            let dead = rabbit.message_count(&dlq).await.ok()? as usize;
            let queued = rabbit.message_count(&queue).await.ok()?;
            (idless_orders.iter().all(|id| executions.contains_key(id))
                && dead >= dead_expected
                && queued == 0)
                .then_some(())
        },
    )
    .await;
    // Whatever else might still come: a second letter would show here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    still_running &= worker.exited().is_none();
    let status = worker.terminate(Duration::from_secs(30)).await;

    let dead = read_dead_letters(
        rabbit.source(&dlq, 64).await.expect("DLQ source"),
        dead_expected,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let executions = ledger.executions().await.expect("read the ledger");
    let _ = channel.close(200, "done".into()).await;
    cleanup(&rabbit, &queue).await;
    if let Ok(ch) = rabbit.channel().await {
        for q in [&decoy, &decoy_dlq] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = ledger.drop_schema().await;
    rabbit.close().await;

    eprintln!(
        "bad input: {} cases ({} dead, {} executed) + sentinel, large bodies {} bytes; VmRSS {} KiB -> {} KiB; {:.1?}",
        cases.len(),
        dead_expected,
        must_execute.len() - 1,
        large,
        rss_before,
        rss_after,
        started.elapsed()
    );
    assert!(
        settled.is_some(),
        "the corpus did not settle: {}",
        log_tail(&log)
    );
    assert!(
        idless_settled.is_some(),
        "the id-less duplicates did not settle after the kill -9: {}",
        log_tail(&log)
    );
    assert!(still_running, "the worker stopped: {}", log_tail(&log));
    assert!(
        !log_tail(&log).contains("panicked"),
        "the worker panicked: {}",
        log_tail(&log)
    );

    let by_case: HashMap<&str, Vec<_>> = dead.iter().fold(HashMap::new(), |mut m, d| {
        m.entry(d.headers.get("x-test-case").unwrap_or("?"))
            .or_default()
            .push(d);
        m
    });
    for case in &cases {
        match &case.expect {
            Expect::Dead(kind) => {
                let letters = by_case.get(case.name.as_str()).unwrap_or_else(|| {
                    panic!(
                        "{} is not in the DLQ; DLQ holds {:?}",
                        case.name,
                        by_case.keys()
                    )
                });
                assert_eq!(
                    letters.len(),
                    1,
                    "{}: settled before the kill -9, one letter",
                    case.name
                );
                let letter = letters[0];
                assert_eq!(
                    letter.kind.as_deref(),
                    Some(*kind),
                    "{}: {:?}",
                    case.name,
                    letter.error
                );
                let error = letter.error.as_deref().unwrap_or_default();
                assert!(!error.is_empty(), "{} has no x-backstop-error", case.name);
                assert!(
                    error.len() <= 1024 + 16,
                    "{}: x-backstop-error is {} bytes",
                    case.name,
                    error.len()
                );
                assert!(
                    !letter.message_id.is_empty(),
                    "{} has no message id",
                    case.name
                );
                if let Some(id) = &case.message_id {
                    assert_eq!(&letter.message_id, id, "{} keeps its message id", case.name);
                }
                assert_eq!(
                    letter.payload_len,
                    case.payload.len(),
                    "{}: the body travels unchanged",
                    case.name
                );
                eprintln!(
                    "  {:<24} {:<10} {}",
                    case.name.trim_start_matches(&format!("{run}-")),
                    kind,
                    error.chars().take(100).collect::<String>()
                );
            }
            Expect::Executed(id) => {
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
    // Header values that are not strings arrive on the DLQ copy with their
    // AMQP types and bytes.
    let odd = by_case[format!("{run}-header-types-poison").as_str()][0];
    let amqp = |name: &str| match odd.headers.get_value(name) {
        Some(HeaderValue::Amqp(value)) => Some(value.clone()),
        _ => None,
    };
    assert_eq!(amqp("x-int"), Some(AmqpValue::LongLongInt(42)));
    assert_eq!(amqp("x-bool"), Some(AmqpValue::Boolean(true)));
    assert_eq!(amqp("x-float"), Some(AmqpValue::Double(1.5f64.to_bits())));
    assert_eq!(
        amqp("x-table"),
        Some(AmqpValue::Table(vec![(
            "nested".into(),
            AmqpValue::LongLongInt(7)
        )]))
    );
    assert_eq!(amqp("x-void"), Some(AmqpValue::Void));
    assert_eq!(
        amqp("x-bytes"),
        Some(AmqpValue::ByteArray(vec![0u8, 159, 146, 150].into()))
    );
    assert_eq!(
        executions.get(&sentinel).copied(),
        Some(1),
        "the order after the corpus"
    );
    // One letter per bad message, counted by message: a kill -9 that lands
    // after a letter's confirmed write and before the store records it
    // makes the successor write a second copy of that letter (same message
    // id, same failure; the DLQ tools show copies of one id as one letter).
    // Only the id-less poison bodies were in flight at the kill, so only
    // they may have a copy, at most one per message the worker had in
    // flight (`--concurrency 8`).
    let distinct: std::collections::HashSet<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.headers.get("x-test-case").unwrap_or("?"),
                d.message_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        distinct.len(),
        dead_expected,
        "one dead letter per bad message"
    );
    let copies = dead.len() - distinct.len();
    eprintln!("  copies of a letter written again after the kill -9: {copies}");
    assert!(
        copies <= 8,
        "{copies} copies: more than were in flight at the kill"
    );
    for case in &idless {
        match &case.expect {
            Expect::Executed(id) => assert_eq!(
                executions.get(id).copied(),
                Some(1),
                "{id}: an id-less order sent twice across a kill -9 executes once"
            ),
            Expect::Dead(kind) => {
                // Its two copies are one message: one id in the DLQ (a
                // digest id per delivery would give each copy a letter of
                // its own). A second letter of that id is the kill's copy.
                let ids: std::collections::HashSet<&str> = by_case
                    .get(case.name.as_str())
                    .into_iter()
                    .flatten()
                    .map(|d| d.message_id.as_str())
                    .collect();
                assert_eq!(
                    ids.len(),
                    1,
                    "{}: an id-less poison message sent twice across a kill -9 is one {kind} letter",
                    case.name
                );
            }
        }
    }
    assert_eq!(
        decoy_counts,
        [0, 0],
        "forged routing headers sent messages to {decoy} or its DLQ"
    );
    let forged = by_case[format!("{run}-forged-origin").as_str()][0];
    assert_eq!(
        forged.headers.get("x-backstop-original-source"),
        Some(queue.as_str()),
        "the origin header is rewritten to where the message was consumed"
    );
    // Bounded memory: 17 oversized bodies must not stay resident.
    let bound = rss_before + 64 * 1024 + 2 * (large.max(TEN_MB) as u64 / 1024);
    assert!(
        rss_after <= bound,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB (bound {bound} KiB)"
    );
    let status = status.expect("the worker stops within 30 s of SIGTERM");
    assert!(status.success(), "the worker exited with {status}");
    let _ = std::fs::remove_file(&log);
}

fn log_tail(log: &std::path::Path) -> String {
    backstop_tests::worker::log_tail(log, 30)
}

/// Deletes the queues and the exchange the worker declared for `queue`.
async fn cleanup(rabbit: &RabbitMq, queue: &str) {
    let Ok(channel) = rabbit.channel().await else {
        return;
    };
    let secs = Duration::from_secs;
    let topology = Topology::quorum(queue).retry_tiers([secs(5), secs(30), secs(300)]);
    let mut queues: Vec<String> = topology
        .tiers()
        .iter()
        .map(|t| t.queue_for(queue))
        .collect();
    queues.push(topology.dlq());
    queues.push(queue.to_owned());
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.dlx().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}
