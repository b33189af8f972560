//! What a replay is asked to do ([`ReplayOptions`]) and what a replay,
//! purge or import did ([`Report`], [`ImportReport`]).

use serde::Serialize;

use super::Watch;
use crate::args::ReplayDlqArgs;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The destination instead of the original source.
    pub to: Option<String>,
    /// Change nothing.
    pub dry_run: bool,
    /// Messages per second.
    pub rate: Option<f64>,
    /// The loop guard.
    pub max_replays: u32,
    /// Who follows the replay as it goes (the CLI: nobody; it shows a bar).
    pub watch: Watch,
}

impl From<&ReplayDlqArgs> for ReplayOptions {
    fn from(a: &ReplayDlqArgs) -> Self {
        ReplayOptions {
            to: a.to.clone(),
            dry_run: a.dry_run,
            rate: a.rate,
            max_replays: a.max_replays,
            watch: Watch::default(),
        }
    }
}

/// What a replay or purge did: counts, and the first [`Report::DETAIL`]
/// letters of each kind by id (a report's size does not grow with the DLQ).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Letters redriven (or, with --dry-run, that would be).
    pub replayed_count: usize,
    /// The first of them by id, with their destination.
    pub replayed: Vec<(String, String)>,
    /// Letters refused by the loop guard.
    pub refused_count: usize,
    /// The first of them by id, with how often they were replayed.
    pub refused: Vec<(String, u32)>,
    /// Letters purged.
    pub purged_count: usize,
    /// The first of them by id.
    pub purged: Vec<String>,
    /// Extra copies of replayed or purged letters that were removed with them.
    pub copies: usize,
    /// True for a dry run.
    pub dry_run: bool,
    /// True for a purge (else a replay).
    pub purge: bool,
}

impl Report {
    /// How many letters of each kind a report names.
    pub const DETAIL: usize = 1000;

    /// Counts a letter redriven to `to`.
    pub fn add_replayed(&mut self, id: &str, to: &str) {
        self.replayed_count += 1;
        if self.replayed.len() < Self::DETAIL {
            self.replayed.push((id.to_owned(), to.to_owned()));
        }
    }

    /// Counts a letter the loop guard refused after `replays` redrives.
    pub fn add_refused(&mut self, id: &str, replays: u32) {
        self.refused_count += 1;
        if self.refused.len() < Self::DETAIL {
            self.refused.push((id.to_owned(), replays));
        }
    }

    /// Counts a purged letter.
    pub fn add_purged(&mut self, id: &str) {
        self.purged_count += 1;
        if self.purged.len() < Self::DETAIL {
            self.purged.push(id.to_owned());
        }
    }

    /// A human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        if self.dry_run {
            for (id, to) in &self.replayed {
                out.push_str(&format!("{verb} {id} -> {to}\n"));
            }
            more(&mut out, self.replayed_count, self.replayed.len());
        }
        for (id, n) in &self.refused {
            out.push_str(&format!(
                "refused {id}: already replayed {n} time(s) (--max-replays); inspect it with `dlq show`, purge it, or raise --max-replays\n"
            ));
        }
        more(&mut out, self.refused_count, self.refused.len());
        if !self.purge {
            out.push_str(&format!("{verb} {} message(s)", self.replayed_count));
            if self.refused_count > 0 {
                out.push_str(&format!(", refused {} (loop guard)", self.refused_count));
            }
            out.push('\n');
        }
        if self.purge {
            out.push_str(&format!("purged {} message(s)\n", self.purged_count));
        }
        if self.copies > 0 {
            out.push_str(&format!(
                "{} extra copy(ies) of them (same message id) went with them\n",
                self.copies
            ));
        }
        out
    }
}

fn more(out: &mut String, total: usize, shown: usize) {
    if total > shown {
        out.push_str(&format!("… and {} more\n", total - shown));
    }
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Letters published to the DLQ.
    pub imported: usize,
    /// Letters skipped because the DLQ already holds their message id.
    pub present: usize,
}
