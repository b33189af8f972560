//! The store-outage scenario every shared store runs: its server stops in
//! the middle of a run, and no message may be acked unprocessed, dead-lettered
//! for the outage, or run twice once the server is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::idempotency::Store;
use backstop::memory::{MemoryBroker, dlq_name};
use backstop::{
    CancellationToken, Context, HandlerError, KeySource, Message, Runner, StackBuilder, Summary,
    handler_fn,
};

use crate::store_contract::ContractError;

const SCENARIO: &str = "store_outage";

/// How to take the store's server down and bring it back (blocking calls,
/// such as a service script; run on the blocking pool).
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// Stops the server.
    pub stop: fn(),
    /// Starts it again (also called if the scenario ends while it is down).
    pub start: fn(),
    /// True if keys written before the stop survive it (a store without
    /// persistence forgets them; its pre-outage copies are not checked).
    pub durable: bool,
}

/// Starts the server again if the scenario ends while it is down.
struct StartOnDrop(Option<fn()>);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if let Some(start) = self.0.take() {
            start();
        }
    }
}

fn violated(what: impl Into<String>) -> ContractError {
    ContractError::Violated {
        scenario: SCENARIO,
        what: what.into(),
    }
}

fn ensure(holds: bool, what: impl FnOnce() -> String) -> Result<(), ContractError> {
    if holds { Ok(()) } else { Err(violated(what())) }
}

async fn wait_for(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), ContractError> {
    let until = tokio::time::Instant::now() + deadline;
    while !done() {
        if tokio::time::Instant::now() >= until {
            return Err(violated(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn blocking(action: fn()) -> Result<(), ContractError> {
    tokio::task::spawn_blocking(action)
        .await
        .map_err(|e| violated(format!("server control failed: {e}")))
}

/// Runs 10 messages, stops the server, publishes 10 more and checks that
/// they are requeued (nacked and redelivered, none acked, none
/// dead-lettered, no handler run); starts the server and checks that all 20
/// run exactly once; then republishes copies, which must be duplicates.
/// Needs a multi-threaded runtime.
pub async fn requeues_and_runs_each_message_once(
    store: Arc<dyn Store>,
    outage: Outage,
) -> Result<Summary, ContractError> {
    let queue = "outage";
    let broker = MemoryBroker::new();
    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let handler = handler_fn(move |_body: String, ctx: Context| {
        let seen = Arc::clone(&seen);
        async move {
            *seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(ctx.message_id().to_owned())
                .or_default() += 1;
            Ok::<(), HandlerError>(())
        }
    });
    let stack = StackBuilder::<String>::new(Arc::new(broker.dead_letter_sink()))
        .idempotency(store, KeySource::MessageId)
        .nack_delay(Duration::from_millis(200))
        .build(handler);
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(broker.consume(queue, 8), stack)
            .concurrency(4)
            .with_shutdown(shutdown.clone())
            .run(),
    );
    let publish = |prefix: &str| {
        for i in 0..10 {
            // An in-memory queue without a limit takes every publish.
            let _ = broker.publish_now(
                queue,
                Message::new(format!("body {i}")).with_message_id(format!("{prefix}-{i}")),
            );
        }
    };
    let acked = || broker.stats(queue).acked;
    let handled_ids = || handled.lock().unwrap_or_else(|e| e.into_inner()).clone();

    publish("before");
    wait_for("the first 10 acks", Duration::from_secs(30), || {
        acked() == 10
    })
    .await?;

    let mut restart = StartOnDrop(Some(outage.start));
    blocking(outage.stop).await?;
    publish("during");
    // However slowly the store fails (a connect or operation timeout), the
    // new messages come back nacked; then nothing may have been acked.
    // (The checks below say what was seen if it never happens.)
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while broker.stats(queue).redelivered < 10 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = broker.stats(queue);
    ensure(during.acked == 10, || {
        format!("acked while the store was down: {during:?}")
    })?;
    ensure(during.redelivered >= 10, || {
        format!("the new messages were not nacked and redelivered: {during:?}")
    })?;
    ensure(broker.stats(&dlq_name(queue)).published == 0, || {
        "dead-lettered for an outage".into()
    })?;
    ensure(
        handled_ids().keys().all(|id| id.starts_with("before")),
        || "a handler ran without the store".into(),
    )?;

    blocking(outage.start).await?;
    // Started: the guard has nothing left to do.
    restart.0 = None;
    wait_for(
        "all 20 acks after the restart",
        Duration::from_secs(60),
        || acked() == 20,
    )
    .await?;

    // Copies are duplicates now: those handled after the restart, and with a
    // durable store those handled before it too.
    publish("during");
    let mut expected = 30;
    if outage.durable {
        publish("before");
        expected = 40;
    }
    wait_for("the copies' acks", Duration::from_secs(30), || {
        acked() == expected
    })
    .await?;
    shutdown.cancel();
    let summary = runner
        .await
        .map_err(|e| violated(format!("runner task failed: {e}")))?
        .map_err(|e| violated(format!("runner failed: {e}")))?;

    let handled = handled_ids();
    ensure(
        handled.len() == 20 && handled.values().all(|n| *n == 1),
        || format!("each message must run exactly once: {handled:?}"),
    )?;
    ensure(
        broker.stats(&dlq_name(queue)).published == 0 && summary.dead_lettered == 0,
        || "dead-lettered for an outage".into(),
    )?;
    let duplicates = if outage.durable { 20 } else { 10 };
    ensure(
        summary.handled == 20 && summary.duplicates == duplicates && summary.nacked >= 10,
        || format!("unexpected summary: {summary}"),
    )?;
    Ok(summary)
}
