//! `backstop spool refused`: the messages a publisher's spool set aside
//! because the broker refused them for good (too large, invalid, not
//! authorised) or because their row could not be read back.
//!
//! The spool file is read without taking its lock, so the publisher that
//! owns it may keep running.

use std::fmt::Write as _;
use std::path::PathBuf;

use backstop::wire;
use backstop_spool::{RefusedRecord, Spool};
use clap::{Args, Subcommand};

use crate::dlq::table::shorten;
use crate::error::CliError;

/// `spool`.
#[derive(Debug, Clone, Args)]
pub struct SpoolArgs {
    /// What to look at.
    #[command(subcommand)]
    pub action: SpoolAction,
}

/// The `spool` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum SpoolAction {
    /// List the records set aside: refused for good by the broker, or unreadable.
    Refused(RefusedArgs),
}

/// `spool refused`.
#[derive(Debug, Clone, Args)]
pub struct RefusedArgs {
    /// The spool file (`SpoolConfig::path`).
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,
    /// At most this many records, oldest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `spool` command; returns what to print.
pub async fn run(args: &SpoolArgs) -> Result<String, CliError> {
    match &args.action {
        SpoolAction::Refused(a) => {
            let records = Spool::read_refused(&a.path, a.limit)
                .await
                .map_err(CliError::Spool)?;
            Ok(if a.json {
                json(&records)
            } else {
                table(&records)
            })
        }
    }
}

/// Refused records as pretty JSON (also `backstop outbox refused --json`).
pub(crate) fn json(records: &[RefusedRecord]) -> String {
    let rows: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "seq": r.seq,
                "destination": r.destination,
                "source": r.source,
                "message_id": r.message_id,
                "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "size": r.size,
                "reason": r.reason,
                "error": r.error,
                "spooled_at": wire::format_time(r.spooled_at),
                "refused_at": wire::format_time(r.refused_at),
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n"
}

/// Refused records as a table (also `backstop outbox refused`).
pub(crate) fn table(records: &[RefusedRecord]) -> String {
    if records.is_empty() {
        return "no refused records\n".to_owned();
    }
    let header = [
        "SEQ",
        "MESSAGE ID",
        "DESTINATION",
        "SIZE",
        "REASON",
        "ERROR",
        "REFUSED AT",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.seq.to_string(),
                shorten(&r.message_id, 36),
                shorten(r.destination.as_deref().unwrap_or("<default>"), 30),
                r.size.to_string(),
                shorten(&r.reason, 20),
                shorten(&r.error, 60),
                wire::format_time(r.refused_at),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}
