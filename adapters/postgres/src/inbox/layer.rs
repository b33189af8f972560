//! [`InboxLayer`] and [`InboxService`]: one transaction per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use backstop::idempotency::LeaseToken;
use backstop::outgoing::Outbound;
use backstop::{HandlerError, Request};
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
        Box::pin(async move {
            let timeout = inbox.timeout;
            let key = inbox.key.key_of(&request);
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
                    if conn.batch("rollback", timeout, "ROLLBACK").await.is_ok() {
                        conn.set_in_transaction(false);
                    }
                    conn.release();
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
