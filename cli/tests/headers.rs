//! Header and property fidelity: a message's AMQP properties and headers of
//! every type (RabbitMQ), and its binary, null and repeated headers (Kafka),
//! reach its retry copy, its dead letter and its CLI redrive unchanged.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::message::Headers;
use backstop::{
    CancellationToken, Context, HandlerError, RetryPolicy, Runner, StackBuilder, handler_fn,
};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use backstop_rabbitmq::lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use backstop_rabbitmq::lapin::{BasicProperties, Channel, Confirmation};
use backstop_rabbitmq::{RabbitMq, Topology};
use common::*;

/// What the handler saw on each attempt: its headers and AMQP properties.
type Seen = Arc<Mutex<Vec<(Headers, Option<backstop::inbound::AmqpProperties>)>>>;

/// User headers of several AMQP types, non-UTF-8 bytes included.
fn typed_headers() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("depth".into(), AMQPValue::ShortInt(-3));
    nested.insert("name".into(), AMQPValue::LongString("inner".into()));
    let mut table = FieldTable::default();
    let mut put = |name: &str, value| {
        table.insert(ShortString::from(name), value);
    };
    put("u-text", AMQPValue::LongString("plain".into()));
    put(
        "u-latin1",
        AMQPValue::LongString(LongString::from(vec![0x63, 0x61, 0x66, 0xe9, 0xff, 0x00])),
    );
    put(
        "u-bytes",
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff, 0x80, 0x7f])),
    );
    put("u-i8", AMQPValue::ShortShortInt(-8));
    put("u-i32", AMQPValue::LongInt(-32));
    put("u-u32", AMQPValue::LongUInt(4_000_000_000));
    put("u-i64", AMQPValue::LongLongInt(-(1 << 40)));
    put("u-double", AMQPValue::Double(2.5));
    put(
        "u-decimal",
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12_345,
        }),
    );
    put("u-bool", AMQPValue::Boolean(true));
    put("u-timestamp", AMQPValue::Timestamp(1_700_000_000));
    put("u-table", AMQPValue::FieldTable(nested));
    put(
        "u-array",
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::Void,
            AMQPValue::LongString("two".into()),
        ])),
    );
    put("u-void", AMQPValue::Void);
    table
}

/// Every AMQP property a copy keeps, each set.
fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_correlation_id("corr-7".into())
        .with_reply_to("replies-7".into())
        .with_type("order.placed".into())
        .with_app_id("shop".into())
        .with_priority(5)
        .with_timestamp(1_600_000_000)
        .with_headers(typed_headers())
}

/// The properties a copy must keep, as a comparable tuple.
fn kept(p: &BasicProperties) -> impl PartialEq + std::fmt::Debug {
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    (
        s(p.content_type()),
        s(p.content_encoding()),
        s(p.correlation_id()),
        s(p.reply_to()),
        s(p.kind()),
        s(p.app_id()),
        *p.priority(),
        *p.timestamp(),
        *p.delivery_mode(),
    )
}

/// The producer's headers of `p` (backstop's own `x-backstop-*` and the
/// quorum queue's `x-delivery-count` left out).
fn user_headers(p: &BasicProperties) -> Vec<(String, AMQPValue)> {
    p.headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .filter(|(n, _)| {
                    !n.as_str().starts_with("x-backstop-") && n.as_str() != "x-delivery-count"
                })
                .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Publishes `body` with `properties` to `queue` as they are, confirmed.
async fn publish_raw(channel: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
}

/// One message from `queue` as the broker holds it: properties and body.
async fn get_raw(channel: &Channel, queue: &str) -> (BasicProperties, Vec<u8>) {
    for _ in 0..100 {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get");
        if let Some(message) = got {
            let properties = message.delivery.properties.clone();
            let body = message.delivery.data.clone();
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            return (properties, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing arrived on {queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_and_typed_headers_survive_retry_dead_letter_and_redrive() {
    let rabbit = RabbitMq::connect(amqp())
        .await
        .expect("RabbitMQ is reachable");
    let policy = RetryPolicy::retries(1).in_process_limit(Duration::from_millis(50));
    let topology = Topology::quorum(unique("headers"))
        .max_attempts(policy.max_attempts)
        .retry_tiers([Duration::from_millis(200)]);
    rabbit.declare(&topology).await.unwrap();
    let queue = topology.queue().to_owned();
    let dlq = topology.dlq();

    let channel = rabbit.channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions { nowait: false })
        .await
        .expect("confirm mode");
    let original = all_properties().with_message_id("typed-1".into());
    publish_raw(&channel, &queue, b"{\"n\":1}", original.clone()).await;

    // Attempt 1 fails for a while (a retry copy through the delay queue),
    // attempt 2 for good (a dead letter).
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let handler = handler_fn(move |_v: serde_json::Value, ctx: Context| {
        let s = Arc::clone(&s);
        async move {
            s.lock()
                .unwrap()
                .push((ctx.headers().clone(), ctx.meta().amqp.clone()));
            Err::<(), _>(if ctx.attempt() == 1 {
                HandlerError::transient("busy").retry_after(Duration::from_millis(100))
            } else {
                HandlerError::permanent("refused")
            })
        }
    });
    let stack = StackBuilder::<serde_json::Value>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(policy)
        .retry_sink(Arc::new(rabbit.retry_sink()))
        .build(handler);
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(rabbit.source(&queue, 2).await.unwrap(), stack)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    for _ in 0..200 {
        if rabbit.message_count(&dlq).await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    runner.await.unwrap().unwrap();

    // The retry copy, as the worker consumed it, carries what the original did.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "attempt 1 and its retry copy ran");
    let consumed = |i: usize| {
        let (headers, amqp) = &seen[i];
        let user: Vec<_> = headers
            .iter_values()
            .filter(|(n, _)| !n.starts_with("x-backstop-") && *n != "x-delivery-count")
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect();
        (
            user,
            amqp.clone().map(|p| {
                (
                    p.content_type,
                    p.content_encoding,
                    p.correlation_id,
                    p.reply_to,
                    p.kind,
                    p.app_id,
                    p.priority,
                    p.timestamp,
                )
            }),
        )
    };
    assert_eq!(
        consumed(1),
        consumed(0),
        "the retry copy keeps every header and property"
    );
    assert_eq!(
        consumed(0).0.len(),
        14,
        "every user header arrived: {:?}",
        consumed(0).0
    );

    // The dead letter, as the broker holds it.
    let (letter, body) = get_raw(&channel, &dlq).await;
    assert_eq!(body, b"{\"n\":1}");
    assert_eq!(
        kept(&letter),
        kept(&original),
        "the dead letter's properties"
    );
    assert_eq!(
        user_headers(&letter),
        user_headers(&original),
        "the dead letter's headers, type for type and byte for byte"
    );
    // Put it back for the CLI.
    publish_raw(&channel, &dlq, &body, letter.clone()).await;

    let url = amqp();
    let out = cli_ok(&["dlq", "replay", "--amqp", &url, "--queue", &queue]);
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    let (redriven, body) = get_raw(&channel, &queue).await;
    assert_eq!(body, b"{\"n\":1}");
    assert_eq!(kept(&redriven), kept(&original), "the redrive's properties");
    assert_eq!(
        user_headers(&redriven),
        user_headers(&original),
        "the redrive's headers, type for type and byte for byte"
    );
    assert_eq!(
        redriven.message_id().as_ref().map(ShortString::as_str),
        Some("typed-1")
    );
}

mod kafka {
    use super::*;
    use backstop_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use backstop_kafka::rdkafka::message::{Header, Headers as _, OwnedHeaders};
    use backstop_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    use backstop_kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
    use backstop_kafka::{Kafka, RetryTiers, TopicSpec};

    type RawHeaders = Vec<(String, Option<Vec<u8>>)>;

    /// A binary value, a null value and a repeated name, in this order.
    fn producer_headers() -> RawHeaders {
        vec![
            ("x-bin".into(), Some(vec![0xff, 0x00, 0xfe])),
            ("x-null".into(), None),
            ("x-rep".into(), Some(b"1".to_vec())),
            ("x-rep".into(), Some(vec![0xc3, 0x28])),
        ]
    }

    /// The first `n` records of partition 0 of `topic`: their producer
    /// headers (backstop's `x-backstop-*` left out) and values.
    async fn raw_records(topic: &str, n: usize) -> Vec<(RawHeaders, Vec<u8>)> {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("group.id", unique("raw"))
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .expect("partition");
            consumer.assign(&tpl).expect("assign");
            let mut out = Vec::new();
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while out.len() < n && std::time::Instant::now() < until {
                let Some(record) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let record = record.expect("record");
                let headers = record
                    .headers()
                    .map(|h| {
                        h.iter()
                            .filter(|h| !h.key.starts_with("x-backstop-"))
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((headers, record.payload().unwrap_or_default().to_vec()));
            }
            out
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binary_null_and_repeated_headers_survive_retry_dead_letter_and_redrive() {
        let topic = unique("kh");
        let group = unique("kg");
        let k = Kafka::new(brokers(), &group)
            .retry_tiers(RetryTiers::new([Duration::from_secs(1)]))
            .configure(|c| c.session_timeout = Duration::from_secs(6));
        k.ensure_topics([TopicSpec::new(&topic).partitions(1)])
            .await
            .unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("producer");
        let mut headers = OwnedHeaders::new();
        for (key, value) in &producer_headers() {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let body = b"{\"n\":1}".to_vec();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k1")
                    .payload(&body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");

        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        let handler = handler_fn(move |_v: serde_json::Value, ctx: Context| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push((ctx.headers().clone(), None));
                Err::<(), _>(if ctx.attempt() == 1 {
                    HandlerError::transient("busy").retry_after(Duration::from_millis(100))
                } else {
                    HandlerError::permanent("refused")
                })
            }
        });
        let stack = StackBuilder::<serde_json::Value>::new(Arc::new(k.dead_letter_sink().unwrap()))
            .retry(RetryPolicy::retries(1).in_process_limit(Duration::from_millis(50)))
            .retry_sink(Arc::new(k.retry_sink().unwrap()))
            .build(handler);
        run_until(
            k.source(&[&topic], 4).unwrap(),
            stack,
            Duration::from_secs(60),
            || async { dlq_len(&k, &topic).await >= 1 },
        )
        .await;
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "attempt 1 and its retry copy ran"
        );

        let retry = k.retry_topics(&topic)[0].clone();
        let copies = raw_records(&retry, 1).await;
        assert_eq!(
            copies,
            [(producer_headers(), body.clone())],
            "the retry copy's headers, byte for byte and in order"
        );
        let letters = raw_records(&k.dlq_topic(&topic), 1).await;
        assert_eq!(
            letters,
            [(producer_headers(), body.clone())],
            "the dead letter's headers, byte for byte and in order"
        );

        let b = brokers();
        let out = cli_ok(&[
            "dlq", "replay", "--kafka", &b, "--topic", &topic, "--group", &group,
        ]);
        assert!(out.contains("replayed 1 message(s)"), "{out}");
        let redriven = raw_records(&retry, 2).await;
        assert_eq!(
            redriven.len(),
            2,
            "the redrive went to the group's retry path"
        );
        assert_eq!(
            redriven[1],
            (producer_headers(), body),
            "the redrive's headers, byte for byte and in order"
        );
    }
}
