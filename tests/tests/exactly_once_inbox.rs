//! Kafka exactly-once mode with the PostgreSQL inbox: a handler's writes
//! commit in the inbox transaction, its Kafka outputs in the Kafka one.
//! When the Kafka transaction aborts after the inbox committed, the
//! redelivery finds the inbox row and skips the handler, and the outputs
//! recorded in that row go into the next transaction: each output appears
//! once, each effect happened once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::publish::Publisher;
use backstop::{
    Context, HandlerError, KeySource, Message, RetryPolicy, Runner, StackBuilder, handler_fn,
};
use backstop_kafka::{Kafka, TopicSpec};
use backstop_postgres::{Inbox, InboxTx, PgConfig};
use backstop_tests::fault::read_messages;
use backstop_tests::ledger::Ledger;
use backstop_tests::unique;

/// Every record of `topic` a `read_committed` reader sees within `wait`
/// (stops once `n` arrived and nothing more came for `idle`).
async fn read(
    brokers: &str,
    topic: &str,
    n: usize,
    idle: Duration,
    wait: Duration,
) -> Vec<Message> {
    let reader = Kafka::new(brokers, unique("reader").replace('_', "-"));
    let source = reader.plain_source(&[topic], 64).expect("reader");
    read_messages(source, n, idle, wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_recorded_in_the_inbox_are_published_once_after_an_abort() {
    let run = unique("eo_inbox");
    let topic = run.replace('_', "-");
    let outputs = format!("{topic}.out");
    let group = format!("{topic}-g");
    let brokers = backstop_kafka::brokers_from_env();
    let kafka = Kafka::new(brokers.clone(), group.clone())
        .configure(|c| {
            c.missing_topic_timeout = Duration::from_secs(2);
            c.message_timeout = Duration::from_secs(10);
        })
        .exactly_once("w1");
    // The source and the outputs, but no DLQ yet: every transaction that
    // holds the poison message's letter aborts.
    let admin = kafka.topics().expect("admin");
    admin
        .create(&[
            TopicSpec::new(topic.clone()).partitions(1),
            TopicSpec::new(outputs.clone()),
        ])
        .await
        .expect("topics");
    let publisher = kafka.publisher().expect("publisher");
    // The poison message first: no watermark passes it, so the good one's
    // output can only commit in a transaction that also holds the letter.
    for (i, body) in ["poison", "good"].iter().enumerate() {
        publisher
            .publish(
                &topic,
                &Message::new(*body).with_message_id(format!("{run}-{i}")),
            )
            .await
            .expect("publish");
    }
    let ledger = Ledger::create(&run).await.expect("schema");
    let pool = PgConfig::new(ledger.url())
        .max_connections(4)
        .pool()
        .expect("pool");
    pool.get()
        .await
        .expect("connection")
        .batch_execute("CREATE TABLE effects (id text PRIMARY KEY)")
        .await
        .expect("effects table");
    let inbox = Inbox::new(pool.clone()).keyed_by(KeySource::MessageId);
    inbox.migrate().await.expect("migrate the inbox");

    let runs: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let stack = |kafka: &Kafka| {
        let (runs, outputs) = (Arc::clone(&runs), outputs.clone());
        StackBuilder::<String>::new(Arc::new(kafka.dead_letter_sink().expect("sink")))
            .retry(RetryPolicy::retries(1))
            .nack_delay(Duration::from_millis(100))
            .around_attempt(inbox.layer())
            .build(handler_fn(move |body: String, ctx: Context| {
                let (runs, outputs) = (Arc::clone(&runs), outputs.clone());
                async move {
                    *runs
                        .lock()
                        .unwrap()
                        .entry(ctx.message_id().to_owned())
                        .or_insert(0) += 1;
                    if body == "poison" {
                        return Err(HandlerError::permanent("poison"));
                    }
                    InboxTx::from_context(&ctx)?
                        .execute("INSERT INTO effects (id) VALUES ($1)", &[&ctx.message_id()])
                        .await?;
                    ctx.publish(&outputs, Message::new(format!("out-{body}")))
                        .await?;
                    Ok(())
                }
            }))
    };
    let start = |kafka: &Kafka| {
        let stop = backstop::CancellationToken::new();
        let runner = Runner::new(
            kafka.plain_source(&[&topic], 4).expect("source"),
            stack(kafka),
        )
        .concurrency(4)
        .with_shutdown(stop.clone());
        (stop, tokio::spawn(runner.run()))
    };

    // The poison message's letter cannot be written: the transaction holding
    // it and the good message's output aborts, and both run again.
    let (stop, worker) = start(&kafka);
    let poison_id = format!("{run}-0");
    let good_id = format!("{run}-1");
    let until = Instant::now() + Duration::from_secs(60);
    while runs.lock().unwrap().get(&poison_id).copied().unwrap_or(0) < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        runs.lock().unwrap().get(&poison_id).copied().unwrap_or(0) >= 2,
        "the transaction aborted and the partition was run again: {runs:?}"
    );
    assert!(
        read(
            &brokers,
            &outputs,
            1,
            Duration::from_secs(1),
            Duration::from_secs(3)
        )
        .await
        .is_empty(),
        "nothing of an aborted transaction is visible"
    );

    // With the DLQ in place the same worker's next transaction commits: the
    // good message's output, re-emitted from its inbox row, and the letter.
    admin
        .create(&[TopicSpec::new(kafka.dlq_topic(&topic))])
        .await
        .expect("DLQ");
    let letters = read(
        &brokers,
        &kafka.dlq_topic(&topic),
        1,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    // Everything the outputs topic holds by then, copies included: the
    // reader's new group may take long to join (120 s for the first copy),
    // and once a copy arrived it reads on until none came for 5 s, so a
    // copy committed after the first is still seen.
    let published = read(
        &brokers,
        &outputs,
        1,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    stop.cancel();
    let _ = worker.await;
    let effects: i64 = pool
        .get()
        .await
        .expect("connection")
        .query_one("SELECT count(*) FROM effects", &[])
        .await
        .expect("count")
        .get(0);
    let _ = ledger.drop_schema().await;

    let bodies: Vec<String> = published
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(bodies, ["out-good"], "the output once");
    assert_eq!(
        published[0].meta.message_id,
        format!("{topic}#{group}:{good_id}:out:0"),
        "its id derived from the input, as first published"
    );
    assert_eq!(letters.len(), 1, "the letter once");
    assert_eq!(effects, 1, "the effect once");
    assert_eq!(
        runs.lock().unwrap().get(&good_id).copied(),
        Some(1),
        "the handler ran once; redeliveries were skipped by the inbox"
    );
}
