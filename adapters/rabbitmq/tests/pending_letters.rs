//! A dead letter whose write failed is kept in the shared idempotency store:
//! a worker whose DLQ write is refused stops, and a fresh worker (a new
//! runner, a new store handle, its own process state) that gets the
//! redelivery writes only that letter, with the original failure, without
//! running the handler. On Redis and on PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::idempotency::Store;
use backstop::publish::Publisher;
use backstop::{
    CancellationToken, Context, ErrorKind, HandlerError, KeySource, Message, RetryPolicy, Runner,
    StackBuilder, Summary, handler_fn, wire,
};
use backstop_postgres::{PgConfig, PostgresStore};
use backstop_rabbitmq::RabbitMq;
use backstop_rabbitmq::lapin::options::{BasicGetOptions, QueueDeleteOptions};
use backstop_redis::{RedisConfig, RedisStore};
use common::{cleanup, count_reaches, drain, eventually, full_queue, quorum, rabbit, unique};

/// The first worker's failure: what the letter must carry.
const ORIGINAL: &str = "payment gateway did not answer within 2s";

/// Runs one worker on `queue` with `store` until `done` (or 10 s), then
/// shuts it down; its handler fails with `kind` and `why`, counting runs.
async fn worker(
    rabbit: &RabbitMq,
    queue: &str,
    parking: &str,
    store: Arc<dyn Store>,
    (kind, why): (ErrorKind, &'static str),
    runs: &Arc<AtomicU32>,
    done: impl AsyncFnOnce(),
) -> Summary {
    let counted = Arc::clone(runs);
    let handler = handler_fn(move |_v: String, _ctx: Context| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Err::<(), _>(HandlerError::permanent_with(kind, why)) }
    });
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .retry(RetryPolicy::retries(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .nack_delay(Duration::from_millis(200))
        .idempotency(store, KeySource::MessageId)
        .dead_letter_to(parking.to_owned())
        .build(handler);
    let source = rabbit
        .source(queue, 1)
        .await
        .unwrap()
        .skip_destination_check();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Runner::new(source, stack)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    done().await;
    shutdown.cancel();
    run.await.unwrap().unwrap()
}

/// The scenario on the store `connect` opens (each call a new handle).
async fn the_redelivery_writes_only_the_original_letter<F, Fut>(connect: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "pending-store").await;
    // A parking queue that holds one message and refuses more (a nack: a
    // transient failure of the DLQ write), filled up.
    let parking = full_queue(&rabbit, "parking").await;
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("\"x\"").with_message_id(unique("order")),
        )
        .await
        .unwrap();

    // The first worker runs the handler, cannot write the letter, and stops.
    let first_runs = Arc::new(AtomicU32::new(0));
    let first = worker(
        &rabbit,
        topology.queue(),
        &parking,
        connect().await,
        (ErrorKind::Timeout, ORIGINAL),
        &first_runs,
        async || {
            eventually(Duration::from_secs(10), || {
                first_runs.load(Ordering::SeqCst) > 0
            })
            .await;
            // A few redeliveries meet the full parking queue.
            tokio::time::sleep(Duration::from_millis(700)).await;
        },
    )
    .await;
    assert_eq!(first_runs.load(Ordering::SeqCst), 1, "{first}");
    assert!(first.nacked >= 1, "the DLQ write was refused: {first}");
    assert_eq!(first.dead_lettered, 0, "{first}");
    assert!(
        count_reaches(&rabbit, topology.queue(), 1).await,
        "the message stays on its queue"
    );

    // Room in the parking queue; a fresh worker with a new store handle.
    let channel = rabbit.channel().await.unwrap();
    let filler = channel
        .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(filler.is_some(), "the filler was still there");
    let second_runs = Arc::new(AtomicU32::new(0));
    let second = worker(
        &rabbit,
        topology.queue(),
        &parking,
        connect().await,
        (ErrorKind::Panic, "a different failure"),
        &second_runs,
        async || {
            count_reaches(&rabbit, &parking, 1).await;
        },
    )
    .await;
    assert_eq!(
        second_runs.load(Ordering::SeqCst),
        0,
        "the redelivery retried only the write, the handler did not run again: {second}"
    );
    assert_eq!(second.dead_lettered, 1, "{second}");
    assert!(count_reaches(&rabbit, topology.queue(), 0).await);
    let letters = drain(&rabbit, &parking, Duration::from_millis(300)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header(wire::ERROR_KIND),
        Some("timeout"),
        "the original kind"
    );
    let text = letters[0].header(wire::ERROR).unwrap_or_default();
    assert!(text.contains(ORIGINAL), "the original error text: {text}");
    assert_eq!(letters[0].header(wire::ATTEMPT), Some("1"));
    let _ = channel
        .queue_delete(parking.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "OK".into()).await;
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_pending_in_redis_is_written_by_a_fresh_worker_without_rerunning() {
    let url =
        std::env::var("BACKSTOP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("{}:", unique("pending"));
    the_redelivery_writes_only_the_original_letter(|| {
        let config = RedisConfig::new(url.clone()).prefix(&prefix);
        async move {
            let store = RedisStore::connect_with(config).await.expect("Redis runs");
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_pending_in_postgres_is_written_by_a_fresh_worker_without_rerunning() {
    let url = std::env::var("BACKSTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://backstop:backstop@127.0.0.1:5432/backstop".to_owned());
    let table = unique("pending").replace('-', "_");
    let open = || async {
        let pool = PgConfig::new(url.clone()).pool().expect("a pool");
        let store = PostgresStore::new(pool).with_table(&table).expect("a name");
        store.migrate().await.expect("PostgreSQL runs");
        store
    };
    the_redelivery_writes_only_the_original_letter(|| async {
        Arc::new(open().await) as Arc<dyn Store>
    })
    .await;
    let store = open().await;
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute(&format!(
            "DROP TABLE {0}; DELETE FROM backstop_schema_version WHERE object LIKE '{0}%'",
            store.table()
        ))
        .await
        .unwrap();
}
