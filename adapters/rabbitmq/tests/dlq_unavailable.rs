//! A DLQ that cannot take the message: the source stays unacked and is
//! redelivered after a backoff, not in a hot loop; once the DLQ can take it,
//! it is dead-lettered exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::{
    CancellationToken, Context, HandlerError, Message, Publisher, Runner, StackBuilder, Summary,
    handler_fn, wire,
};
use backstop_rabbitmq::lapin::ExchangeKind;
use backstop_rabbitmq::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeleteOptions,
};
use backstop_rabbitmq::lapin::types::FieldTable;
use backstop_rabbitmq::{RabbitMq, Topology};
use common::{cleanup, drain, quorum, rabbit, unique};

const NACK_DELAY: Duration = Duration::from_millis(200);
const OUTAGE: Duration = Duration::from_secs(2);

/// Runs a worker whose handler always fails permanently, until `repair` ran and the message is gone.
async fn run_through_outage(
    rabbit: &RabbitMq,
    topology: &Topology,
    dead_letter_to: Option<String>,
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
    let r = Arc::clone(&runs);
    let handler = handler_fn(move |_v: String, _ctx: Context| {
        let runs = Arc::clone(&r);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(HandlerError::permanent("cannot ever work"))
        }
    });
    let mut builder =
        StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink())).nack_delay(NACK_DELAY);
    if let Some(to) = dead_letter_to {
        builder = builder.dead_letter_to(to);
    }
    let source = rabbit.source(topology.queue(), 4).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, builder.build(handler))
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    tokio::time::sleep(OUTAGE).await;
    let during_outage = runs.load(Ordering::SeqCst);
    repair.await;
    let gone = {
        let mut gone = false;
        for _ in 0..100 {
            let runs_now = runs.load(Ordering::SeqCst);
            if runs_now > during_outage
                && rabbit.message_count(topology.queue()).await.unwrap() == 0
            {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gone
    };
    // Give a wrongly repeated dead-lettering the time to show.
    tokio::time::sleep(Duration::from_millis(800)).await;
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();
    assert!(
        gone,
        "the message left the source once the DLQ worked: {summary}"
    );
    (summary, during_outage)
}

fn assert_backed_off(summary: &Summary, during_outage: u32) {
    // The nack waits NACK_DELAY/2 ..= NACK_DELAY: at most OUTAGE / (NACK_DELAY/2) + 1 runs.
    let most = u32::try_from(OUTAGE.as_millis() / (NACK_DELAY.as_millis() / 2)).unwrap() + 1;
    assert!(
        during_outage >= 2,
        "redelivered during the outage ({during_outage} runs)"
    );
    assert!(
        during_outage <= most,
        "{during_outage} runs in {OUTAGE:?} is a hot loop (at most {most})"
    );
    assert_eq!(
        summary.dead_lettered, 1,
        "dead-lettered exactly once: {summary}"
    );
    assert!(summary.nacked >= 1, "{summary}");
    assert_eq!(summary.handled, 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dlq_exchange_keeps_the_message_until_the_exchange_exists() {
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
    let (summary, during_outage) =
        run_through_outage(&rabbit, &topology, Some(format!("{exchange}/dead")), repair).await;
    assert_backed_off(&summary, during_outage);
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
async fn unroutable_dead_letter_keeps_the_message_until_the_dlq_exists() {
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
    let (summary, during_outage) = run_through_outage(&rabbit, &topology, None, repair).await;
    assert_backed_off(&summary, during_outage);
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
async fn the_handler_keeps_running_while_the_dlq_is_out() {
    // The outage test above counts runs; this one checks the message is still
    // on its queue (unacked) in the middle of the outage.
    let rabbit = rabbit().await;
    let topology = quorum(&rabbit, "dlq-held").await;
    let channel = rabbit.channel().await.unwrap();
    channel
        .queue_delete(
            topology.dlq().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    rabbit
        .publisher()
        .publish(topology.queue(), &Message::new("\"x\""))
        .await
        .unwrap();
    let handler = handler_fn(|_v: String, _ctx: Context| async {
        Err::<(), _>(HandlerError::permanent("no"))
    });
    let stack = StackBuilder::<String>::new(Arc::new(rabbit.dead_letter_sink()))
        .nack_delay(NACK_DELAY)
        .build(handler);
    let source = rabbit.source(topology.queue(), 1).await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(source, stack)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    shutdown.cancel();
    let summary = runner.await.unwrap().unwrap();
    assert_eq!(summary.dead_lettered, 0, "{summary}");
    assert!(summary.nacked >= 1, "{summary}");
    // Back on the queue (the broker requeues it as the consumer closes), ready for the next worker.
    let mut ready = 0;
    for _ in 0..60 {
        ready = rabbit.message_count(topology.queue()).await.unwrap();
        if ready == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 1);
    cleanup(&rabbit, &topology).await;
}
