//! Keeping a DLQ's [`Index`] current.
//!
//! - **Kafka**: extended from where the last read ended. The state topic
//!   (`<dlq>.state`: what was replayed or purged) and then the DLQ topic are
//!   read from the offsets recorded in the index to their end offsets; each
//!   record adds a copy to its letter key, each state record sets a key's
//!   state, and the new end offsets are recorded with the rows, in one
//!   transaction. The first build reads the topic once; later ones read
//!   only what arrived since (the background loop does it every
//!   `refresh_secs`).
//! - **RabbitMQ**: a queue has no offsets and cannot be browsed, so the index
//!   is one walk of the library ([`Dlq::each`](crate::dlq::Dlq::each), the rotation `dlq list`
//!   does) into a fresh file that replaces the old one when complete. It is
//!   built once, then kept current by the console's own actions (a redriven
//!   or purged letter is marked as it goes); letters that arrive later are
//!   shown as the difference between the queue's depth and the index, with a
//!   button to walk again.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::clusters::Broker;
use super::error::ConsoleError;
use super::index::{Index, Writer};
use super::state::DlqState;
use crate::dlq::{Letter, kafka};
use crate::error::CliError;
use crate::kafka_read;

fn to_cli(e: ConsoleError) -> CliError {
    CliError::Scratch(e.to_string())
}

fn to_cli_state(path: &std::path::Path) -> ConsoleError {
    ConsoleError::State {
        path: path.display().to_string(),
        reason: "an index walk panicked".into(),
    }
}

fn now_text() -> String {
    backstop::wire::format_time(std::time::SystemTime::now())
}

/// Brings the index of `dlq` up to date (see the module docs); on RabbitMQ
/// only when `rewalk` or it was never built. Holds the DLQ's lock for a
/// RabbitMQ walk.
pub async fn refresh(dlq: &DlqState, rewalk: bool) -> Result<(), ConsoleError> {
    match &dlq.at.broker {
        Broker::Kafka(k) => {
            // Skipped while an action runs: it marks the rows itself, and
            // the next refresh reads its state records.
            let Ok(_walk) = dlq.lock.try_lock() else {
                return Ok(());
            };
            let (brokers, topic, index) = (k.brokers.clone(), dlq.at.name.clone(), dlq.index());
            let seen = dlq.seen_counter();
            tokio::task::spawn_blocking(move || extend_kafka(&brokers, &topic, &index, &seen))
                .await
                .map_err(|e| ConsoleError::State {
                    path: dlq.at.key(),
                    reason: e.to_string(),
                })?
        }
        Broker::Rabbit(_) => {
            if !rewalk && dlq.index().meta("indexed_at")?.is_some() {
                return Ok(());
            }
            let _walk = dlq.lock.lock().await;
            walk_rabbit(dlq).await
        }
    }
}

fn extend_kafka(
    brokers: &str,
    topic: &str,
    index: &Index,
    seen: &AtomicU64,
) -> Result<(), ConsoleError> {
    let writer = RefCell::new(index.writer()?);
    let states = kafka::state_topic(topic);
    let read = kafka_read::read_from(brokers, &states, &index.offsets(&states)?, |m, tomb| {
        if let Some((key, state)) = kafka::state_record(&m, tomb) {
            writer
                .borrow_mut()
                .set_state(&key, state.as_deref())
                .map_err(to_cli)?;
        }
        Ok(true)
    });
    match read {
        Ok(ends) => writer.borrow_mut().set_offsets(&states, &ends)?,
        Err(CliError::MissingTopic(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let ends = kafka_read::read_from(brokers, topic, &index.offsets(topic)?, |m, _| {
        let letter = Letter::new(m);
        writer
            .borrow_mut()
            .upsert(&letter, &kafka::letter_key(&letter))
            .map_err(to_cli)?;
        seen.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    })?;
    let mut writer = writer.into_inner();
    writer.set_offsets(topic, &ends)?;
    writer.set_meta("indexed_at", &now_text())?;
    writer.commit()
}

async fn walk_rabbit(dlq: &DlqState) -> Result<(), ConsoleError> {
    let index = dlq.index();
    let fresh = index.path().with_extension("building");
    for ext in ["", "-wal", "-shm"] {
        let mut p = fresh.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(p);
    }
    let opened = dlq.at.open().await?;
    // A mutex, not a RefCell: the walk's future must be Send.
    let writer = std::sync::Mutex::new(Writer::open(&fresh)?);
    let seen = dlq.seen_counter();
    let locked = || {
        writer
            .lock()
            .map_err(|_| CliError::Scratch("an index walk panicked".into()))
    };
    opened
        .each(
            true,
            |letter| {
                seen.fetch_add(1, Ordering::Relaxed);
                let id = letter.id().to_owned();
                locked()?.upsert(&letter, &id).map_err(to_cli)
            },
            |id| {
                if let Ok(mut w) = locked() {
                    let _ = w.add_copy(id);
                }
            },
        )
        .await?;
    let mut writer = writer.into_inner().map_err(|_| to_cli_state(&fresh))?;
    writer.set_meta("indexed_at", &now_text())?;
    writer.commit()?;
    index.replace_with(&fresh)
}
