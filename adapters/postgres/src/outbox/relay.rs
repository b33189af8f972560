//! [`OutboxRelay`]: one relay at a time per outbox table, elected by an
//! advisory lock, draining the table with the spool's relay loop.

use std::sync::Arc;
use std::time::Duration;

use backstop::CancellationToken;
use backstop::publish::Publisher;
use backstop_spool::{RecordLog, Relay, SpooledRecord};
use tokio::sync::{Mutex, Notify};

use super::{Outbox, Unreadable, record};
use crate::PostgresError;
use crate::conn::Conn;

/// How an [`OutboxRelay`] drains its table and takes over from another.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The spool relay's settings: batch size, idle poll (default here
    /// 200 ms: rows committed by other processes are found within it),
    /// backoff between failed rounds.
    pub relay: backstop_spool::RelayConfig,
    /// How long one send may wait for the broker's confirm (default 10 s).
    pub attempt_timeout: Duration,
    /// How often a relay that is not the leader tries to become it
    /// (default 1 s): the longest a takeover waits after the leader's
    /// session ended.
    pub standby_poll: Duration,
    /// How often the leading relay counts the rows waiting, for the
    /// `backstop_spool_depth` gauge (default 5 s).
    pub depth_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relay: backstop_spool::RelayConfig::default().idle_poll(Duration::from_millis(200)),
            attempt_timeout: Duration::from_secs(10),
            standby_poll: Duration::from_secs(1),
            depth_every: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    /// Sets the spool relay's settings.
    #[must_use]
    pub fn relay(mut self, relay: backstop_spool::RelayConfig) -> Self {
        self.relay = relay;
        self
    }

    /// Sets the bound on one send.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets how often a standby relay tries to lead.
    #[must_use]
    pub fn standby_poll(mut self, every: Duration) -> Self {
        self.standby_poll = every;
        self
    }

    /// Sets how often the leader counts the rows waiting.
    #[must_use]
    pub fn depth_every(mut self, every: Duration) -> Self {
        self.depth_every = every;
        self
    }
}

/// A relay of an outbox table to a broker (see the
/// [module docs](super#order-per-key-across-processes)): one per process,
/// one leading per table. Stops when dropped or with [`stop`](Self::stop).
#[derive(Debug)]
pub struct OutboxRelay {
    relay: Relay,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    leading: std::sync::atomic::AtomicBool,
    terms: std::sync::atomic::AtomicU64,
}

impl OutboxRelay {
    pub(crate) fn start<P: Publisher>(outbox: Outbox, publisher: P, config: RelayConfig) -> Self {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let relay =
            Relay::task(move |stop| campaign(outbox, Arc::new(publisher), config, shared, stop));
        OutboxRelay { relay, state }
    }

    /// True while this relay holds the table's lock and relays.
    pub fn is_leading(&self) -> bool {
        self.state
            .leading
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many times this relay became the leader.
    pub fn terms(&self) -> u64 {
        self.state.terms.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops relaying after the current round, gives up the lock, and
    /// waits. (Dropped, it stops without waiting.)
    pub async fn stop(&self) {
        self.relay.stop().await;
    }
}

/// Sleeps `delay` unless stopped first; false when stopped.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

/// Tries for the lock until stopped; relays while holding it.
async fn campaign<P: Publisher>(
    outbox: Outbox,
    publisher: Arc<P>,
    config: RelayConfig,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let name = outbox.name();
    let timeout = outbox.timeout();
    let mut waiting_logged = false;
    while !stop.is_cancelled() {
        let mut conn = match Conn::checkout(outbox.pool(), timeout).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(relay = %name, %error, "the outbox relay cannot reach PostgreSQL; trying again");
                if !pause(&stop, config.standby_poll).await {
                    break;
                }
                continue;
            }
        };
        let won = conn
            .query("outbox leader lock", timeout, &outbox.sql.leader_lock, &[])
            .await
            .map(|rows| rows.first().is_some_and(|row| row.get::<_, bool>(0)));
        match won {
            Ok(true) => {}
            Ok(false) => {
                conn.release();
                if !waiting_logged {
                    tracing::info!(relay = %name, "another process relays this outbox; standing by");
                    waiting_logged = true;
                }
                if !pause(&stop, config.standby_poll).await {
                    break;
                }
                continue;
            }
            Err(error) => {
                conn.discard();
                tracing::warn!(relay = %name, %error, "the outbox relay could not try its lock; trying again");
                if !pause(&stop, config.standby_poll).await {
                    break;
                }
                continue;
            }
        }
        waiting_logged = false;
        // The lock is the session's: this connection never returns to the
        // pool; closing it gives the lock up.
        conn.set_in_transaction(true);
        state
            .terms
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        state
            .leading
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(relay = %name, "this process relays the outbox");
        let leader = Arc::new(Leader {
            outbox: outbox.clone(),
            conn: Mutex::new(conn),
            name: name.clone(),
        });
        let relay = Relay::start(
            Arc::clone(&leader),
            Arc::clone(&publisher),
            config.relay.clone(),
            config.attempt_timeout,
        );
        let mut next_depth = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_depth {
                // The backlog, for `backstop_spool_depth{spool="outbox:<table>"}`.
                match outbox.pending().await {
                    Ok(rows) => {
                        metrics::gauge!(backstop_spool::metrics::DEPTH, "spool" => name.clone())
                            .set(rows as f64)
                    }
                    Err(error) => {
                        tracing::debug!(relay = %name, %error, "counting the outbox failed")
                    }
                }
                next_depth = tokio::time::Instant::now() + config.depth_every;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if relay.is_finished() {
                        break;
                    }
                }
            }
        }
        relay.stop().await;
        state
            .leading
            .store(false, std::sync::atomic::Ordering::Release);
        leader.conn.lock().await.discard();
        if !stop.is_cancelled() {
            tracing::warn!(relay = %name, "the outbox relay lost its lock connection; trying to lead again");
            if !pause(&stop, config.standby_poll).await {
                break;
            }
        }
    }
    tracing::debug!(relay = %name, "outbox relay stopped");
}

/// The leading relay's view of the table, on the connection that holds the lock.
struct Leader {
    outbox: Outbox,
    conn: Mutex<Conn>,
    name: String,
}

/// A failure of the leader's connection or statements.
#[derive(Debug, thiserror::Error)]
enum LeaderError {
    /// The connection holding the lock is gone: another relay may lead now.
    #[error("the connection holding the relay's lock is gone: {0}")]
    Lost(PostgresError),
    /// A statement failed on a live connection.
    #[error(transparent)]
    Statement(PostgresError),
}

impl Leader {
    fn classify(conn: &mut Conn, error: PostgresError) -> LeaderError {
        let gone = conn.client_mut().is_none_or(|c| c.is_closed());
        if gone {
            conn.discard();
            LeaderError::Lost(error)
        } else {
            LeaderError::Statement(error)
        }
    }

    async fn set_aside_unreadable(
        &self,
        conn: &mut Conn,
        bad: &Unreadable,
    ) -> Result<(), LeaderError> {
        tracing::error!(relay = %self.name, seq = bad.seq, reason = %bad.reason,
            "an outbox row cannot be read back; it is set aside (Outbox::refused)");
        let seq = i64::try_from(bad.seq).unwrap_or(i64::MAX);
        let timeout = self.outbox.timeout();
        conn.execute(
            "outbox set aside",
            timeout,
            &self.outbox.sql.set_aside,
            &[&seq, &"unreadable", &bad.to_string()],
        )
        .await
        .map(drop)
        .map_err(|e| Self::classify(conn, e))
    }
}

#[async_trait::async_trait]
impl RecordLog for Leader {
    type Error = LeaderError;

    fn name(&self) -> &str {
        &self.name
    }

    fn arrived(&self) -> &Notify {
        self.outbox.arrived()
    }

    async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SpooledRecord>, LeaderError> {
        let mut after = i64::try_from(after).unwrap_or(i64::MAX);
        let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.conn.lock().await;
        loop {
            let rows = conn
                .query(
                    "outbox read",
                    self.outbox.timeout(),
                    &self.outbox.sql.read,
                    &[&after, &wanted],
                )
                .await
                .map_err(|e| Self::classify(&mut conn, e))?;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                match record(row) {
                    Ok(record) => records.push(record),
                    Err(bad) => self.set_aside_unreadable(&mut conn, &bad).await?,
                }
            }
            // A full batch of unreadable rows is not the end of the table:
            // read on past it.
            let last = rows.last().and_then(|r| r.try_get::<_, i64>(0).ok());
            match last {
                Some(last) if records.is_empty() && rows.len() == limit => after = last,
                _ => return Ok(records),
            }
        }
    }

    fn is_closed(error: &LeaderError) -> bool {
        matches!(error, LeaderError::Lost(_))
    }

    async fn high_water(&self) -> Option<u64> {
        // An empty table, or a failed query: 0, so the pass ends after its
        // first round and asks again (never an unbounded pass).
        let mut conn = self.conn.lock().await;
        let high = conn
            .query(
                "outbox high water",
                self.outbox.timeout(),
                &self.outbox.sql.high_water,
                &[],
            )
            .await
            .ok()
            .and_then(|rows| rows.first()?.try_get::<_, Option<i64>>(0).ok().flatten())
            .and_then(|h| u64::try_from(h).ok());
        Some(high.unwrap_or(0))
    }

    async fn still_owned(&self) -> bool {
        // The lock lives as long as the session: a closed connection (the
        // session terminated, the server gone) means another relay may lead.
        let mut conn = self.conn.lock().await;
        conn.client_mut().is_some_and(|client| !client.is_closed())
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, LeaderError> {
        let seqs: Vec<i64> = seqs
            .iter()
            .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
            .collect();
        let mut conn = self.conn.lock().await;
        conn.execute(
            "outbox delete",
            self.outbox.timeout(),
            &self.outbox.sql.remove,
            &[&seqs],
        )
        .await
        .map_err(|e| Self::classify(&mut conn, e))
    }

    async fn set_aside(&self, seq: u64, reason: &str, error: &str) -> Result<(), LeaderError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let mut conn = self.conn.lock().await;
        conn.execute(
            "outbox set aside",
            self.outbox.timeout(),
            &self.outbox.sql.set_aside,
            &[&seq, &reason, &error],
        )
        .await
        .map(drop)
        .map_err(|e| Self::classify(&mut conn, e))
    }
}
