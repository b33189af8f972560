//! A DLQ that cannot take the message (missing, unroutable): the source stays
//! unacked, the worker stops consuming and reports not ready instead of
//! looping; once the DLQ exists, a restarted worker dead-letters it exactly
//! once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::publish::Publisher;
use backstop::{
    CancellationToken, Context, HandlerError, Message, Runner, StackBuilder, Summary, handler_fn,
    wire,
};
use backstop_rabbitmq::lapin::ExchangeKind;
use backstop_rabbitmq::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::{RabbitMq, Topology};
use common::{cleanup, count_reaches, drain, halted, quorum, rabbit, unique};

const NACK_DELAY: Duration = Duration::from_millis(200);
const OUTAGE: Duration = Duration::from_secs(1);

/// Runs a worker whose handler always fails permanently until it halts on
/// the missing DLQ, runs `repair`, then a fresh worker until the letter is
/// in `letters` (a queue) and the message gone from the source. Returns the
/// second run's summary and the runs of the first.
async fn run_through_outage(
    rabbit: &RabbitMq,
    topology: &Topology,
    dead_letter_to: Option<String>,
    letters: &str,
    repair: impl std::future::Future<Output = ()>,
) -> (Summary, u32) {
    rabbit
        .publisher()
        .publish(
            topology.queue(),
            &Message::new("\"doomed\"").with_message_id("m-doomed"),
        )
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let worker = |runs: &Arc<AtomicU32>| {
        let r = Arc::clone(runs);
        let handler = handler_fn(move |_v: String, _ctx: Context| {
            let runs = Arc::clone(&r);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(HandlerError::permanent("cannot ever work"))
            }
        });
        let mut builder =
            StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).nack_delay(NACK_DELAY);
        if let Some(to) = &dead_letter_to {
            builder = builder.dead_letter_to(to.clone());
        }
        builder.build(handler)
    };
    // The DLQ is out before the start: opt out of the start-up check to
    // prove the runtime path.
    let source = || async {
        rabbit
            .source(topology.queue(), 4)
            .await
            .unwrap()
            .skip_destination_check()
    };
    let shutdown = CancellationToken::new();
    let runner = Runner::new(source().await, worker(&runs))
        .concurrency(4)
        .with_shutdown(shutdown.clone());
    let readiness = runner.readiness();
    let first = tokio::spawn(runner.run());
    assert!(
        halted(&readiness).await,
        "the worker stops consuming: {:?}",
        readiness.get()
    );
    // Halted, not looping: give a wrong retry the time to show.
    tokio::time::sleep(OUTAGE).await;
    let during_outage = runs.load(Ordering::SeqCst);
    shutdown.cancel();
    let halted = first.await.unwrap();
    assert!(
        matches!(halted, Err(backstop::runner::RunError::Halted { .. })),
        "{halted:?}"
    );
    repair.await;
    let shutdown = CancellationToken::new();
    let second = tokio::spawn(
        Runner::new(source().await, worker(&runs))
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    // The letter itself, not only an empty source: "ready 0" also holds
    // while the message is unacked on the halted runner's closing channel.
    let lettered = count_reaches(rabbit, letters, 1).await;
    let gone = count_reaches(rabbit, topology.queue(), 0).await;
    // Give a wrongly repeated dead-lettering the time to show.
    tokio::time::sleep(Duration::from_millis(800)).await;
    shutdown.cancel();
    let summary = second.await.unwrap().unwrap();
    assert!(
        lettered,
        "the letter reached {letters} once the DLQ worked: {summary}"
    );
    assert!(
        gone,
        "the message left the source once the DLQ worked: {summary}"
    );
    (summary, during_outage)
}

fn assert_halted_then_dead_lettered_once(summary: &Summary, during_outage: u32) {
    assert_eq!(
        during_outage, 1,
        "the handler ran once, then the worker stopped consuming"
    );
    assert_eq!(
        summary.dead_lettered, 1,
        "dead-lettered exactly once: {summary}"
    );
    assert_eq!(summary.handled, 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dlq_exchange_keeps_the_message_and_halts_until_the_exchange_exists() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "dlx-missing").await;
    let exchange = unique("late-dlx");
    let parking = quorum(&rabbit, "parking").await;
    let r = rabbit.clone();
    let (ex, park) = (exchange.clone(), parking.queue().to_owned());
    let repair = async move {
        let channel = r.channel().await.unwrap();
        channel
            .exchange_declare(
                ex.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                park.as_str().into(),
                ex.as_str().into(),
                "dead".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "OK".into()).await;
    };
    let (summary, during_outage) = run_through_outage(
        &rabbit,
        &topology,
        Some(format!("{exchange}/dead")),
        parking.queue(),
        repair,
    )
    .await;
    assert_halted_then_dead_lettered_once(&summary, during_outage);
    let letters = drain(&rabbit, parking.queue(), Duration::from_millis(500)).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    assert_eq!(letters[0].meta.message_id, "m-doomed");
    assert_eq!(letters[0].header(wire::ERROR_KIND), Some("permanent"));
    let channel = rabbit.channel().await.unwrap();
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    cleanup(&rabbit, &topology).await;
    cleanup(&rabbit, &parking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_dead_letter_keeps_the_message_and_halts_until_the_dlq_exists() {
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "dlq-missing").await;
    let channel = rabbit.channel().await.unwrap();
    channel
        .queue_delete(
            topology.dlq().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let r = rabbit.clone();
    let t = topology.clone();
    let repair = async move { r.declare(&t).await.unwrap() };
    let (summary, during_outage) =
        run_through_outage(&rabbit, &topology, None, &topology.dlq(), repair).await;
    assert_halted_then_dead_lettered_once(&summary, during_outage);
    let letters = drain(&rabbit, &topology.dlq(), Duration::from_millis(500)).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    assert_eq!(letters[0].meta.message_id, "m-doomed");
    assert_eq!(
        letters[0].header(wire::ORIGINAL_SOURCE),
        Some(topology.queue())
    );
    cleanup(&rabbit, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_its_dlq_fails_at_start_naming_it() {
    let rabbit = rabbit().await;
    let queue = unique("nodlq-start");
    let channel = rabbit.channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            backstop_rabbitmq::lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).build(handler_fn(
        |_v: String, _ctx: Context| async { Ok::<(), HandlerError>(()) },
    ));
    let run = Runner::new(rabbit.source(&queue, 1).await.unwrap(), stack).run();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the runner stops at start, not at the first poison message");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let Err(backstop::runner::RunError::Source { source, .. }) = result else {
        panic!("a queue without its DLQ must not run: {result:?}");
    };
    let text = source.to_string();
    assert!(text.contains(&format!("{queue}.dlq")), "{text}");
    assert!(text.contains("RabbitMq::declare"), "{text}");
}
