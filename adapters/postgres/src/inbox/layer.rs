//! [`InboxLayer`] and [`InboxService`]: one transaction per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use backstop::HandlerError;
use backstop::idempotency::LeaseToken;
use backstop::outgoing::{Collected, Outbound, Outgoing};
use backstop::request::Request;
use backstop::transaction::InTransaction;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::Inbox;
use super::tx::InboxTx;
use crate::PostgresError;
use crate::column;
use crate::conn::Conn;
use crate::outbox::OutboxWriter;

/// Applies the transactional inbox to the handler; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct InboxLayer {
    inbox: Arc<Inbox>,
}

impl InboxLayer {
    /// The layer for `inbox`.
    pub fn new(inbox: Inbox) -> Self {
        InboxLayer {
            inbox: Arc::new(inbox),
        }
    }
}

impl<S> Layer<S> for InboxLayer {
    type Service = InboxService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InboxService {
            inner,
            inbox: Arc::clone(&self.inbox),
        }
    }
}

/// Runs each attempt of the inner service inside an inbox transaction.
#[derive(Clone, Debug)]
pub struct InboxService<S> {
    inner: S,
    inbox: Arc<Inbox>,
}

/// The inbox could not do its part: the database is down, so the message
/// is deferred without counting an attempt (never dead-lettered for it).
fn unavailable(error: PostgresError) -> HandlerError {
    HandlerError::unavailable(error)
}

/// A failed commit (or the fence check before it): an aborted transaction
/// (SQLSTATE 25P02, after a failure the handler did not return) is
/// [`InboxError::Aborted`](super::InboxError::Aborted), classified by the
/// latest failure noted (`permanent`); other errors are classified like the
/// handler's own queries.
fn refused(error: PostgresError, permanent: bool) -> HandlerError {
    match error {
        PostgresError::Query { source, .. }
            if source.code()
                == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION) =>
        {
            let source = PostgresError::Query {
                op: "commit",
                source,
            };
            super::InboxError::Aborted { source, permanent }.into()
        }
        PostgresError::Query { source, .. } => super::InboxError::Query(source).into(),
        other => unavailable(other),
    }
}

impl<S, T> Service<Request<T>> for InboxService<S>
where
    S: Service<Request<T>, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    T: Send + Sync + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let inbox = Arc::clone(&self.inbox);
        // In a source's transaction (Kafka exactly-once) and without an
        // outbox, publishes go into that transaction, recorded in the row.
        let transaction = request
            .extensions
            .get::<InTransaction>()
            .cloned()
            .filter(|_| inbox.outbox.is_none());
        Box::pin(async move {
            let timeout = inbox.timeout;
            let key = inbox.key.key_of(&request);
            let mut row = None;
            let layout = inbox.key_layout().await.map_err(unavailable)?;
            let mut conn = Conn::checkout(&inbox.pool, timeout)
                .await
                .map_err(unavailable)?;
            conn.set_in_transaction(true);
            conn.batch("begin", timeout, "BEGIN")
                .await
                .map_err(unavailable)?;
            if let Some(key) = &key {
                let message = request.message();
                let attempt = i32::try_from(request.attempt()).unwrap_or(i32::MAX);
                let (stored_key, message_id, source) = (
                    column::key(key),
                    column::text(&message.meta.message_id),
                    column::text(&message.meta.source),
                );
                let (consumer, legacy) = inbox.consumers(layout, &message.meta);
                row = Some((consumer.to_string(), stored_key.to_string()));
                let mut insert = async |consumer: &str| {
                    conn.execute(
                        "inbox insert",
                        timeout,
                        &inbox.sql.insert,
                        &[&consumer, &stored_key, &message_id, &source, &attempt],
                    )
                    .await
                    .map_err(unavailable)
                };
                // In a migration window the row under the earlier release's
                // name comes first: committed before, the message is done
                // (its new row is written now); new, it makes a worker of
                // the earlier release wait for this transaction and skip.
                let done_before = match legacy {
                    Some(legacy) => insert(legacy).await? == 0,
                    None => false,
                };
                let inserted = insert(&consumer).await?;
                if done_before {
                    tracing::debug!(%key, "inbox: processed under the earlier layout, handler skipped");
                    conn.batch("commit", timeout, "COMMIT")
                        .await
                        .map_err(unavailable)?;
                    conn.set_in_transaction(false);
                    conn.release();
                    return Ok(());
                }
                if inserted == 0 {
                    tracing::debug!(%key, message_id = %message.meta.message_id, "inbox: already processed, handler skipped");
                    let recorded = match &transaction {
                        Some(_) => conn
                            .query(
                                "inbox outputs",
                                timeout,
                                &inbox.sql.outputs,
                                &[&consumer, &stored_key],
                            )
                            .await
                            .map_err(unavailable)?,
                        None => Vec::new(),
                    };
                    if conn.batch("rollback", timeout, "ROLLBACK").await.is_ok() {
                        conn.set_in_transaction(false);
                    }
                    conn.release();
                    if let Some(transaction) = &transaction {
                        re_emit(transaction, &recorded, &message.meta.message_id)?;
                    }
                    return Ok(());
                }
            }
            let lease = inbox
                .fence
                .as_ref()
                .zip(request.extensions.get::<LeaseToken>().cloned());
            let (tx, mut open) = InboxTx::new(conn, key);
            let wrote = inbox.outbox.as_ref().map(|outbox| {
                let wrote = Arc::new(AtomicBool::new(false));
                let writer = OutboxWriter::new(outbox.clone(), tx.clone(), Arc::clone(&wrote));
                let outbound = Outbound::for_service(
                    Arc::new(writer),
                    request.message_arc(),
                    inbox.service.clone(),
                );
                request.extensions.insert(outbound);
                (outbox, wrote)
            });
            let collected = transaction.as_ref().map(|_| {
                let collected = Arc::new(Collected::default());
                request.extensions.insert(Outbound::for_service(
                    Arc::clone(&collected) as Arc<dyn Outgoing>,
                    request.message_arc(),
                    inbox.service.clone(),
                ));
                collected
            });
            request.extensions.insert(tx);
            match inner.call(request).await {
                Ok(()) => {
                    if open.poisoned() {
                        // A statement was abandoned and may still run: never commit.
                        if let Err(rollback) = open.finish("rollback", "ROLLBACK", timeout).await {
                            tracing::debug!(%rollback, "inbox: rollback failed; the connection was closed instead");
                        }
                        return Err(super::InboxError::Aborted {
                            source: PostgresError::Discarded {
                                op: "a statement abandoned after its timeout",
                            },
                            permanent: false,
                        }
                        .into());
                    }
                    if let Some((sql, lease)) = lease {
                        let stored = column::key(&lease.key);
                        let fence = i64::try_from(lease.fence.0).unwrap_or(-1);
                        let held = match open.check(sql, &stored, fence, timeout).await {
                            Ok(held) => held,
                            Err(error) => return Err(refused(error, open.failed_permanent())),
                        };
                        if !held {
                            if let Err(rollback) =
                                open.finish("rollback", "ROLLBACK", timeout).await
                            {
                                tracing::debug!(%rollback, "inbox: rollback failed; the connection was closed instead");
                            }
                            return Err(HandlerError::unavailable(super::InboxError::LeaseLost {
                                key: lease.key.to_string(),
                                fence: lease.fence.0,
                            }));
                        }
                    }
                    let outputs = collected.map(|c| c.take()).unwrap_or_default();
                    // A record the transaction can never take (too large)
                    // fails the attempt before its effects commit.
                    if let Some(transaction) = &transaction
                        && let Some(error) = outputs
                            .iter()
                            .find_map(|(d, m)| transaction.0.admits(d, m).err())
                    {
                        if let Err(rollback) = open.finish("rollback", "ROLLBACK", timeout).await {
                            tracing::debug!(%rollback, "inbox: rollback failed; the connection was closed instead");
                        }
                        return Err(HandlerError::permanent(error));
                    }
                    if let Some((consumer, stored_key)) = &row
                        && !outputs.is_empty()
                    {
                        let record = super::outputs::encode(&outputs)?;
                        if let Err(error) = open
                            .execute(
                                "inbox outputs",
                                &inbox.sql.record_outputs,
                                &[consumer, stored_key, &record],
                                timeout,
                            )
                            .await
                        {
                            if let Err(rollback) =
                                open.finish("rollback", "ROLLBACK", timeout).await
                            {
                                tracing::debug!(%rollback, "inbox: rollback failed; the connection was closed instead");
                            }
                            return Err(unavailable(error));
                        }
                    }
                    // One simple query: on an aborted transaction `SELECT 1`
                    // fails and PostgreSQL skips the `COMMIT` (which would
                    // roll back without an error), and no other handle can
                    // run a statement in between.
                    if let Err(error) = open.finish("commit", "SELECT 1; COMMIT", timeout).await {
                        return Err(refused(error, open.failed_permanent()));
                    }
                    if let Some((outbox, wrote)) = wrote
                        && wrote.load(Ordering::Acquire)
                    {
                        outbox.committed();
                    }
                    // Refused now only if the delivery was fenced (a
                    // rewind, a revoke): its next run re-emits them.
                    if let Some(transaction) = &transaction {
                        transaction
                            .0
                            .produce_all(outputs)
                            .map_err(HandlerError::unavailable)?;
                    }
                    Ok(())
                }
                Err(error) => {
                    if let Err(rollback) = open.finish("rollback", "ROLLBACK", timeout).await {
                        tracing::debug!(%rollback, "inbox: rollback failed; the connection was closed instead");
                    }
                    Err(error)
                }
            }
        })
    }
}

/// Hands the outputs recorded in a skipped message's row to the current
/// transaction (the one that aborted never published them; an earlier
/// copy a reader saw has the same ids). An unreadable record fails the
/// message for good: its outputs cannot be rebuilt.
fn re_emit(
    transaction: &InTransaction,
    rows: &[tokio_postgres::Row],
    message_id: &str,
) -> Result<(), HandlerError> {
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let recorded: Option<String> = row.try_get(0).map_err(|e| {
        HandlerError::permanent(format!("the inbox row's outputs cannot be read: {e}"))
    })?;
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let outputs = super::outputs::decode(&recorded).map_err(|e| {
        tracing::error!(message_id, error = %e, "inbox: the recorded outputs of a processed message cannot be read");
        HandlerError::permanent(format!("the inbox row's outputs cannot be read: {e}"))
    })?;
    tracing::debug!(
        message_id,
        outputs = outputs.len(),
        "inbox: re-emitting the recorded outputs of a processed message"
    );
    transaction
        .0
        .produce_all(outputs)
        .map_err(HandlerError::unavailable)
}
