use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::delivery::Delivery;
use backstop::publish::Publisher;
use backstop::runner::Source;
use backstop::{
    CancellationToken, Context, HandlerError, Message, RetryPolicy, Runner, StackBuilder,
    handler_fn,
};

use super::{ConformanceError, Harness, Report};

/// How long a scenario may wait for its messages.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// What a reader does with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Ack it.
    Ack,
    /// Nack it with requeue.
    Requeue,
    /// Drop it unsettled (the adapter must have it redelivered).
    Drop,
}

/// `n` messages for `queue`: ids `<queue>-<i>`, JSON payloads, five keys, a sequence header.
pub fn batch(queue: &str, n: usize) -> (Vec<Message>, BTreeSet<String>) {
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            Message::new(format!(r#"{{"n":{i}}}"#))
                .with_message_id(format!("{queue}-{i}"))
                .with_key(format!("k{}", i % 5))
                .with_header("x-conformance-seq", i.to_string())
        })
        .collect();
    let ids = messages.iter().map(|m| m.meta.message_id.clone()).collect();
    (messages, ids)
}

/// Publishes every message, each confirmed, in order.
pub async fn publish_all(
    publisher: &dyn Publisher,
    queue: &str,
    messages: &[Message],
) -> Result<(), ConformanceError> {
    for m in messages {
        publisher
            .publish(queue, m)
            .await
            .map_err(|e| ConformanceError::broker("publish")(Box::new(e)))?;
    }
    Ok(())
}

/// Reads until every expected id was acked, or the deadline; returns deliveries per id.
pub async fn read_until_acked<S: Source>(
    source: &mut S,
    expected: &BTreeSet<String>,
    deadline: Duration,
    mut decide: impl FnMut(&Message, usize) -> Settle,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let until = tokio::time::Instant::now() + deadline;
    while !expected.iter().all(|id| acked.contains(id)) {
        let Ok(next) = tokio::time::timeout_at(until, source.next()).await else {
            break;
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) if !e.is_fatal() => continue,
            _ => break,
        };
        let id = delivery.message().meta.message_id.clone();
        let count = seen.entry(id.clone()).or_default();
        *count += 1;
        match decide(delivery.message(), *count) {
            Settle::Ack => {
                if delivery.ack().await.is_ok() {
                    acked.insert(id);
                }
            }
            Settle::Requeue => {
                let _ = delivery.nack(true).await;
            }
            Settle::Drop => drop(delivery),
        }
    }
    seen
}

async fn fresh<H: Harness>(
    h: &H,
    scenario: &'static str,
) -> Result<(String, Arc<dyn Publisher>), ConformanceError> {
    let queue = h
        .fresh_queue()
        .await
        .map_err(ConformanceError::broker(scenario))?;
    let publisher = h
        .publisher()
        .await
        .map_err(ConformanceError::broker(scenario))?;
    Ok((queue, publisher))
}

async fn source<H: Harness>(
    h: &H,
    queue: &str,
    prefetch: usize,
    scenario: &'static str,
) -> Result<H::Source, ConformanceError> {
    h.source(queue, prefetch)
        .await
        .map_err(ConformanceError::broker(scenario))
}

/// 100 messages: payloads, keys' headers and ids survive the trip.
pub async fn publish_subscribe<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "publish_subscribe";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 100);
    publish_all(&*publisher, &queue, &messages).await?;
    let mut src = source(h, &queue, 10, S).await?;
    let by_id: HashMap<_, _> = messages
        .iter()
        .map(|m| (m.meta.message_id.clone(), m))
        .collect();
    let mut wrong = Vec::new();
    let seen = read_until_acked(&mut src, &ids, DEADLINE, |m, _| {
        if let Some(sent) = by_id.get(&m.meta.message_id)
            && (sent.payload != m.payload
                || sent.header("x-conformance-seq") != m.header("x-conformance-seq"))
        {
            wrong.push(m.meta.message_id.clone());
        }
        Settle::Ack
    })
    .await;
    src.close().await;
    if !wrong.is_empty() {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!("payload or headers changed in transit for {wrong:?}"),
        });
    }
    Report::compare(S, &ids, &seen).ensure()
}

/// The first delivery of every message is nacked: every message still arrives.
pub async fn resend_on_error<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "resend_on_error";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 50);
    publish_all(&*publisher, &queue, &messages).await?;
    let mut src = source(h, &queue, 10, S).await?;
    let seen = read_until_acked(&mut src, &ids, DEADLINE, |_, n| {
        if n == 1 { Settle::Requeue } else { Settle::Ack }
    })
    .await;
    src.close().await;
    if let Some((id, _)) = seen.iter().find(|(_, n)| **n < 2) {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!("{id} was acked without being redelivered first"),
        });
    }
    Report::compare(S, &ids, &seen).ensure()
}

/// With prefetch 1, the next message waits until the current one is acked.
pub async fn no_ack_blocks<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "no_ack_blocks";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 2);
    publish_all(&*publisher, &queue, &messages).await?;
    let mut src = source(h, &queue, 1, S).await?;
    let first = next_delivery(&mut src, S).await?;
    if let Ok(Some(Ok(second))) = tokio::time::timeout(Duration::from_secs(2), src.next()).await {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!(
                "{} was delivered while {} was unacked with prefetch 1",
                second.message().meta.message_id,
                first.message().meta.message_id
            ),
        });
    }
    let mut seen = HashMap::from([(first.message().meta.message_id.clone(), 1)]);
    first
        .ack()
        .await
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?;
    let second = next_delivery(&mut src, S).await?;
    seen.insert(second.message().meta.message_id.clone(), 1);
    second
        .ack()
        .await
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?;
    src.close().await;
    Report::compare(S, &ids, &seen).ensure()
}

async fn next_delivery<S: Source>(
    src: &mut S,
    scenario: &'static str,
) -> Result<Delivery, ConformanceError> {
    loop {
        match tokio::time::timeout(DEADLINE, src.next()).await {
            Ok(Some(Ok(d))) => return Ok(d),
            Ok(Some(Err(e))) if !e.is_fatal() => continue,
            Ok(Some(Err(e))) => return Err(ConformanceError::broker(scenario)(Box::new(e))),
            Ok(None) | Err(_) => {
                return Err(ConformanceError::Violated {
                    scenario,
                    what: "no delivery arrived".into(),
                });
            }
        }
    }
}

/// 1,000 messages; consumers are opened and closed repeatedly while reading
/// (a third of each round's deliveries dropped unsettled): nothing is lost.
pub async fn continue_after_close<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "continue_after_close";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 1000);
    publish_all(&*publisher, &queue, &messages).await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let until = tokio::time::Instant::now() + DEADLINE * 2;
    let mut round = 0usize;
    while acked.len() < ids.len() && tokio::time::Instant::now() < until {
        round += 1;
        let mut src = source(h, &queue, 20, S).await?;
        let budget = 150 + (round * 37) % 100;
        for i in 0..budget {
            let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(10), src.next()).await
            else {
                break;
            };
            let Ok(d) = next else { continue };
            let id = d.message().meta.message_id.clone();
            *seen.entry(id.clone()).or_default() += 1;
            if i % 3 == 2 {
                drop(d);
            } else if d.ack().await.is_ok() {
                acked.insert(id);
            }
        }
        src.close().await;
    }
    Report::compare(S, &ids, &seen).ensure().and_then(|r| {
        if acked.len() == ids.len() {
            Ok(r)
        } else {
            Err(ConformanceError::Violated {
                scenario: S,
                what: format!(
                    "only {} of {} acked after {round} rounds",
                    acked.len(),
                    ids.len()
                ),
            })
        }
    })
}

/// 2,000 messages from 4 concurrent publishers, read by 3 concurrent consumers: all received.
pub async fn concurrent_subscribe<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "concurrent_subscribe";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 2000);
    let messages = Arc::new(messages);
    let mut publishers = tokio::task::JoinSet::new();
    for part in 0..4 {
        let (publisher, messages, queue) =
            (Arc::clone(&publisher), Arc::clone(&messages), queue.clone());
        publishers.spawn(async move {
            let mine: Vec<Message> = messages.iter().skip(part).step_by(4).cloned().collect();
            publish_all(&*publisher, &queue, &mine).await
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.map_err(|e| ConformanceError::broker(S)(Box::new(e)))??;
    }
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(source(h, &queue, 50, S).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut src in consumers {
        let (seen, acked, stop, total) = (
            Arc::clone(&seen),
            Arc::clone(&acked),
            stop.clone(),
            ids.len(),
        );
        tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = src.next() => next,
                };
                let Some(Ok(d)) = next else { continue };
                let id = d.message().meta.message_id.clone();
                let first = {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    let n = seen.entry(id).or_default();
                    *n += 1;
                    *n == 1
                };
                if d.ack().await.is_ok()
                    && first
                    && acked.fetch_add(1, Ordering::SeqCst) + 1 >= total
                {
                    stop.cancel();
                }
            }
            src.close().await;
        });
    }
    let _ = tokio::time::timeout(DEADLINE, stop.cancelled()).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Report::compare(S, &ids, &seen).ensure()
}

/// Two queues: each consumer sees only its own queue's messages.
pub async fn topic_isolation<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "topic_isolation";
    let (a, publisher) = fresh(h, S).await?;
    let b = h.fresh_queue().await.map_err(ConformanceError::broker(S))?;
    let (ma, ids_a) = batch(&a, 20);
    let (mb, ids_b) = batch(&b, 20);
    publish_all(&*publisher, &a, &ma).await?;
    publish_all(&*publisher, &b, &mb).await?;
    let mut src_a = source(h, &a, 10, S).await?;
    let seen_a = read_until_acked(&mut src_a, &ids_a, DEADLINE, |_, _| Settle::Ack).await;
    src_a.close().await;
    let mut src_b = source(h, &b, 10, S).await?;
    let seen_b = read_until_acked(&mut src_b, &ids_b, DEADLINE, |_, _| Settle::Ack).await;
    src_b.close().await;
    Report::compare(S, &ids_a, &seen_a).ensure()?;
    Report::compare(S, &ids_b, &seen_b).ensure()
}

/// Per-key order equals publish order.
pub async fn key_order<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "key_order";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 200);
    publish_all(&*publisher, &queue, &messages).await?;
    let mut src = source(h, &queue, 1, S).await?;
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut violations = Vec::new();
    let seen = read_until_acked(&mut src, &ids, DEADLINE, |m, _| {
        let seq: usize = m
            .header("x-conformance-seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let key = m.key.as_deref().unwrap_or_default().to_vec();
        if let Some(prev) = last.insert(key, seq)
            && prev > seq
        {
            violations.push((prev, seq));
        }
        Settle::Ack
    })
    .await;
    src.close().await;
    if !violations.is_empty() {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!(
                "per-key order broken: {:?}",
                &violations[..violations.len().min(5)]
            ),
        });
    }
    Report::compare(S, &ids, &seen).ensure()
}

/// Through the full stack: 10 succeed, 10 fail once then succeed, 10 fail
/// permanently. Exactly the permanent ones reach the DLQ, with their headers.
pub async fn stack_dead_letters<H: Harness>(h: &H) -> Result<Report, ConformanceError> {
    const S: &str = "stack_dead_letters";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, _) = batch(&queue, 30);
    publish_all(&*publisher, &queue, &messages).await?;
    let bad: BTreeSet<String> = (20..30).map(|i| format!("{queue}-{i}")).collect();
    let handled = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let h2 = Arc::clone(&handled);
    let handler = handler_fn(move |v: serde_json::Value, ctx: Context| {
        let handled = Arc::clone(&h2);
        async move {
            let n = v["n"].as_u64().unwrap_or(0);
            match n {
                20.. => Err(HandlerError::permanent(format!("order {n} is invalid"))),
                10.. if ctx.attempt() == 1 => Err(HandlerError::transient("flaky")),
                _ => {
                    handled
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(ctx.message_id().to_owned());
                    Ok(())
                }
            }
        }
    });
    let sink = h
        .dead_letter_sink(&queue)
        .await
        .map_err(ConformanceError::broker(S))?;
    let stack = StackBuilder::<serde_json::Value>::new(sink)
        .retry(
            RetryPolicy::retries(3).backoff(Duration::from_millis(10), Duration::from_millis(50)),
        )
        .nack_delay(Duration::from_millis(100))
        .build(handler);
    let src = source(h, &queue, 8, S).await?;
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(src, stack)
            .concurrency(8)
            .with_shutdown(stop.clone())
            .run(),
    );
    let mut dlq = source(h, &h.dlq_name(&queue), 10, S).await?;
    let mut wrong = Vec::new();
    let seen = read_until_acked(&mut dlq, &bad, DEADLINE, |m, _| {
        if m.header(backstop::wire::ERROR_KIND) != Some("permanent")
            || m.header(backstop::wire::ORIGINAL_SOURCE) != Some(queue.as_str())
            || m.header(backstop::wire::ERROR)
                .is_none_or(|e| !e.contains("invalid"))
        {
            wrong.push(m.meta.message_id.clone());
        }
        Settle::Ack
    })
    .await;
    dlq.close().await;
    let until = tokio::time::Instant::now() + DEADLINE;
    while handled.lock().unwrap_or_else(|e| e.into_inner()).len() < 20
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = runner
        .await
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?;
    if !wrong.is_empty() {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!("DLQ headers wrong on {wrong:?}"),
        });
    }
    let done = handled.lock().unwrap_or_else(|e| e.into_inner()).len();
    if done != 20 || summary.dead_lettered < 10 {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!("handled {done} of 20, summary: {summary}"),
        });
    }
    Report::compare(S, &bad, &seen).ensure()
}

/// A shutdown during processing: the handler sees cancellation, the message
/// is not counted as failed, and a fresh consumer gets it again.
pub async fn shutdown_cancels_in_flight_work<H: Harness>(
    h: &H,
) -> Result<Report, ConformanceError> {
    const S: &str = "shutdown_cancels_in_flight_work";
    let (queue, publisher) = fresh(h, S).await?;
    let (messages, ids) = batch(&queue, 1);
    publish_all(&*publisher, &queue, &messages).await?;
    let started = Arc::new(tokio::sync::Notify::new());
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let (st, sc) = (Arc::clone(&started), Arc::clone(&saw_cancel));
    let handler = handler_fn(move |_: serde_json::Value, ctx: Context| {
        let (started, saw_cancel) = (Arc::clone(&st), Arc::clone(&sc));
        async move {
            started.notify_one();
            tokio::select! {
                () = ctx.cancellation().cancelled() => saw_cancel.store(true, Ordering::SeqCst),
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            Err::<(), _>(HandlerError::transient("interrupted by shutdown"))
        }
    });
    let sink = h
        .dead_letter_sink(&queue)
        .await
        .map_err(ConformanceError::broker(S))?;
    let stack = StackBuilder::<serde_json::Value>::new(sink).build(handler);
    let src = source(h, &queue, 1, S).await?;
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(src, stack)
            .shutdown_deadline(Duration::from_secs(10))
            .with_shutdown(stop.clone())
            .run(),
    );
    tokio::time::timeout(DEADLINE, started.notified())
        .await
        .map_err(|_| ConformanceError::Violated {
            scenario: S,
            what: "handler never started".into(),
        })?;
    stop.cancel();
    let summary = runner
        .await
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?
        .map_err(|e| ConformanceError::broker(S)(Box::new(e)))?;
    if !saw_cancel.load(Ordering::SeqCst) || summary.handled + summary.dead_lettered != 0 {
        return Err(ConformanceError::Violated {
            scenario: S,
            what: format!(
                "cancellation seen: {}, summary: {summary}",
                saw_cancel.load(Ordering::SeqCst)
            ),
        });
    }
    let mut again = source(h, &queue, 1, S).await?;
    let seen = read_until_acked(&mut again, &ids, DEADLINE, |_, _| Settle::Ack).await;
    again.close().await;
    Report::compare(S, &ids, &seen).ensure()
}
