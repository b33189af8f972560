//! Time to live at consume on RabbitMQ: a message whose AMQP `timestamp`
//! is older than the stack's time to live, or whose `expires-at` header has
//! passed, is dead-lettered with kind `expired` without running; one
//! without a timestamp (a producer that sets none) and a fresh one run.
//! Published with lapin directly, so the test controls the properties.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backstop::expiry::TimeToLive;
use backstop::{CancellationToken, Context, HandlerError, Runner, StackBuilder, handler_fn, wire};
use backstop_rabbitmq::lapin::BasicProperties;
use backstop_rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use backstop_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString};
use common::{cleanup, count_reaches, drain, eventually, quorum, rabbit};

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_unrun_and_unstamped_ones_run() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "ttl").await;
    let queue = topology.queue().to_owned();
    let channel = rabbit.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let now = SystemTime::now();
    let past = wire::format_time(now - Duration::from_secs(5));
    let mut expires = FieldTable::default();
    expires.insert(
        wire::EXPIRES_AT.into(),
        AMQPValue::LongString(LongString::from(past.as_bytes())),
    );
    let cases: [(&str, BasicProperties); 4] = [
        // An hour old by its timestamp: past the 60 s time to live.
        (
            "stale",
            BasicProperties::default().with_timestamp(secs(now) - 3600),
        ),
        // No timestamp: never expires by age.
        ("unstamped", BasicProperties::default()),
        // Fresh, but its producer said it expires 5 s ago.
        (
            "cancelled",
            BasicProperties::default()
                .with_timestamp(secs(now))
                .with_headers(expires),
        ),
        (
            "fresh",
            BasicProperties::default().with_timestamp(secs(now)),
        ),
    ];
    for (id, props) in cases {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                id.as_bytes(),
                props.with_message_id(id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .time_to_live(TimeToLive::max_age(Duration::from_secs(60)))
        .build(handler_fn(move |id: String, _c: Context| {
            r.lock().unwrap().push(id);
            async { Ok::<_, HandlerError>(()) }
        }));
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Runner::new(rabbit.source(&queue, 8).await.unwrap(), stack)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    assert!(
        count_reaches(&rabbit, &topology.dlq(), 2).await,
        "two letters"
    );
    assert!(
        eventually(Duration::from_secs(10), || ran.lock().unwrap().len() == 2).await,
        "the two live messages ran"
    );
    shutdown.cancel();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(
        (summary.handled, summary.dead_lettered),
        (2, 2),
        "{summary}"
    );
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, ["fresh", "unstamped"], "the expired ones never ran");
    assert_eq!(rabbit.message_count(&queue).await.unwrap(), 0, "all acked");

    let mut letters: Vec<(String, String, String)> =
        drain(&rabbit, &topology.dlq(), Duration::from_secs(1))
            .await
            .iter()
            .map(|m| {
                (
                    m.header(wire::MESSAGE_ID).unwrap_or_default().to_owned(),
                    m.header(wire::ERROR_KIND).unwrap_or_default().to_owned(),
                    m.header(wire::ERROR).unwrap_or_default().to_owned(),
                )
            })
            .collect();
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(
        (letters[0].0.as_str(), letters[0].1.as_str()),
        ("cancelled", "expired")
    );
    assert!(
        letters[0].2.contains(&format!("expired at {past}")),
        "{letters:?}"
    );
    assert_eq!(
        (letters[1].0.as_str(), letters[1].1.as_str()),
        ("stale", "expired")
    );
    assert!(letters[1].2.contains("1h"), "the age is named: {letters:?}");
    let _ = channel.close(200, "OK".into()).await;
    cleanup(&rabbit, &topology).await;
}
