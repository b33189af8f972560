//! Outbox rows read back: a record for the relay, or a refused record
//! for an operator.

use std::time::SystemTime;

use backstop::Message;
use backstop::message::Headers;
use backstop_spool::{RefusedRecord, SpooledRecord};
use bytes::Bytes;
use tokio_postgres::Row;

/// Why a row cannot be relayed as it is.
#[derive(Debug, thiserror::Error)]
#[error("outbox row {seq} cannot be read back: {reason}")]
pub(crate) struct Unreadable {
    pub(crate) seq: u64,
    pub(crate) reason: String,
}

/// One outbox row as a record for the relay; a row whose columns cannot
/// be read (headers that are not JSON, text that is not UTF-8) is
/// [`Unreadable`].
pub(crate) fn record(row: &Row) -> Result<SpooledRecord, Unreadable> {
    let seq = row
        .try_get::<_, i64>(0)
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    let bad = |what: &str, e: &dyn std::fmt::Display| Unreadable {
        seq,
        reason: format!("{what}: {e}"),
    };
    let headers: String = row.try_get(6).map_err(|e| bad("headers", &e))?;
    let headers: Headers =
        serde_json::from_str(&headers).map_err(|e| bad("headers are not JSON", &e))?;
    let payload: Vec<u8> = row.try_get(5).map_err(|e| bad("payload", &e))?;
    let mut message = Message::new(Bytes::from(payload));
    message.key = row
        .try_get::<_, Option<Vec<u8>>>(4)
        .map_err(|e| bad("key", &e))?
        .map(Bytes::from);
    message.headers = headers;
    message.meta.source = row
        .try_get::<_, &str>(2)
        .map_err(|e| bad("source", &e))?
        .into();
    message.meta.message_id = row.try_get(3).map_err(|e| bad("message id", &e))?;
    Ok(SpooledRecord {
        seq,
        destination: Some(row.try_get(1).map_err(|e| bad("destination", &e))?),
        message,
        spooled_at: row
            .try_get::<_, SystemTime>(7)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

/// One set-aside outbox row, for an operator.
pub(crate) fn refused_record(row: &Row) -> RefusedRecord {
    let payload: Vec<u8> = row.get(5);
    let key: Option<Vec<u8>> = row.get(4);
    RefusedRecord {
        seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        destination: Some(row.get(1)),
        source: row.get(2),
        message_id: row.get(3),
        size: u64::try_from(payload.len() + key.as_ref().map_or(0, Vec::len)).unwrap_or(0),
        key: key.map(Bytes::from),
        spooled_at: row.get(6),
        reason: row.get::<_, Option<String>>(7).unwrap_or_default(),
        error: row.get::<_, Option<String>>(8).unwrap_or_default(),
        refused_at: row
            .get::<_, Option<SystemTime>>(9)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    }
}
