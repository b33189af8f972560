//! `backstop dlq`: list, show, export, replay (redrive) and purge dead letters,
//! on a RabbitMQ DLQ queue ([`rabbit`]) or a Kafka DLQ topic ([`kafka`]).

pub mod export;
pub mod filter;
pub mod kafka;
pub mod rabbit;
pub mod table;

use std::time::{Duration, SystemTime};

use backstop::{Message, wire};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub use self::filter::Filter;
use crate::args::{DlqAction, DlqTarget, ReplayDlqArgs};
use crate::error::CliError;

/// One dead letter as read from the DLQ.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The message as read (meta: the DLQ's partition/offset on Kafka).
    pub message: Message,
    /// Kafka: `replayed` or `purged` when the state topic records it.
    pub state: Option<String>,
}

impl Letter {
    /// A letter without state.
    pub fn new(message: Message) -> Self {
        Letter {
            message,
            state: None,
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.message.meta.message_id
    }

    /// `x-backstop-original-source`, if present.
    pub fn original_source(&self) -> Option<&str> {
        self.message.header(wire::ORIGINAL_SOURCE)
    }

    /// When it failed last (else first, else the broker timestamp).
    pub fn failed_at(&self) -> Option<SystemTime> {
        let m = &self.message;
        m.header(wire::LAST_FAILURE)
            .or(m.header(wire::FIRST_FAILURE))
            .and_then(wire::parse_time)
            .or(m.meta.timestamp)
    }
}

/// The copy of `letter` a redrive publishes: the same payload, key, message id
/// and origin headers; `x-backstop-replayed` incremented; `x-backstop-attempt`
/// reset to 1 (a redrive starts a new count); the failure headers of the last
/// run (kind, error, failure times, due) removed, so a new failure is recorded
/// afresh.
pub fn redrive_copy(letter: &Message) -> Message {
    let mut copy = Message {
        payload: letter.payload.clone(),
        headers: letter.headers.clone(),
        key: letter.key.clone(),
        meta: backstop::Meta {
            attempt: 1,
            message_id: letter.meta.message_id.clone(),
            ..backstop::Meta::default()
        },
    };
    let h = &mut copy.headers;
    h.insert(
        wire::REPLAYED.to_owned(),
        (letter.replayed() + 1).to_string(),
    );
    h.insert(wire::ATTEMPT.to_owned(), "1".to_owned());
    for name in [
        wire::ERROR_KIND,
        wire::ERROR,
        wire::FIRST_FAILURE,
        wire::LAST_FAILURE,
        wire::DUE,
    ] {
        h.remove(name);
    }
    copy
}

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
}

impl From<&ReplayDlqArgs> for ReplayOptions {
    fn from(a: &ReplayDlqArgs) -> Self {
        ReplayOptions {
            to: a.to.clone(),
            dry_run: a.dry_run,
            rate: a.rate,
            max_replays: a.max_replays,
        }
    }
}

/// What a replay or purge did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Ids redriven (or, with --dry-run, that would be), with their destination.
    pub replayed: Vec<(String, String)>,
    /// Ids refused by the loop guard, with how often they were replayed.
    pub refused: Vec<(String, u32)>,
    /// Ids purged.
    pub purged: Vec<String>,
    /// True for a dry run.
    pub dry_run: bool,
}

impl Report {
    /// A human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        for (id, to) in &self.replayed {
            if self.dry_run {
                out.push_str(&format!("{verb} {id} -> {to}\n"));
            }
        }
        for (id, n) in &self.refused {
            out.push_str(&format!(
                "refused {id}: already replayed {n} time(s) (--max-replays); inspect it with `dlq show`, purge it, or raise --max-replays\n"
            ));
        }
        if !self.replayed.is_empty() || self.purged.is_empty() {
            out.push_str(&format!("{verb} {} message(s)", self.replayed.len()));
            if !self.refused.is_empty() {
                out.push_str(&format!(", refused {} (loop guard)", self.refused.len()));
            }
            out.push('\n');
        }
        if !self.purged.is_empty() {
            out.push_str(&format!("purged {} message(s)\n", self.purged.len()));
        }
        out
    }
}

/// Spaces publishes to at most `rate` per second.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<tokio::time::Interval>,
}

impl Pacer {
    /// A pacer for `rate` messages per second (none: as fast as confirms come).
    pub fn new(rate: Option<f64>) -> Result<Self, CliError> {
        let interval = match rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
            Some(r) => {
                return Err(CliError::Usage(format!(
                    "--rate {r} must be a positive number of messages per second"
                )));
            }
        };
        Ok(Pacer { interval })
    }

    /// Waits for the next slot.
    pub async fn tick(&mut self) {
        if let Some(i) = self.interval.as_mut() {
            i.tick().await;
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Where a DLQ lives.
#[derive(Debug)]
pub enum Dlq {
    /// A RabbitMQ queue.
    Rabbit(rabbit::RabbitDlq),
    /// A Kafka topic.
    Kafka(Box<kafka::KafkaDlq>),
}

impl Dlq {
    /// Connects to the DLQ named by `target`, checking that it exists.
    pub async fn open(target: &DlqTarget) -> Result<Self, CliError> {
        match (&target.amqp, &target.kafka) {
            (Some(url), None) => {
                let name = match (&target.dlq, &target.queue) {
                    (Some(d), _) => d.clone(),
                    (None, Some(q)) => backstop_rabbitmq::topology::dlq_name(q),
                    (None, None) => {
                        return Err(CliError::Usage(
                            "name the DLQ: --queue <queue> (for <queue>.dlq) or --dlq <name>"
                                .into(),
                        ));
                    }
                };
                Ok(Dlq::Rabbit(rabbit::RabbitDlq::open(url, &name).await?))
            }
            (None, Some(brokers)) => {
                let name = match (&target.dlq, &target.topic, &target.group) {
                    (Some(d), _, _) => d.clone(),
                    (None, Some(t), Some(g)) => backstop_kafka::dlq_topic(t, g),
                    _ => {
                        return Err(CliError::Usage(
                            "name the DLQ: --topic <topic> --group <group> (for <topic>.<group>.dlq) or --dlq <name>".into(),
                        ));
                    }
                };
                Ok(Dlq::Kafka(Box::new(
                    kafka::KafkaDlq::open(brokers, &name).await?,
                )))
            }
            _ => Err(CliError::Usage(
                "give exactly one broker: --amqp <URL> (RabbitMQ) or --kafka <BROKERS>".into(),
            )),
        }
    }

    /// Reads every letter (Kafka: with `include_done`, also replayed/purged ones).
    pub async fn scan(&self, include_done: bool) -> Result<Vec<Letter>, CliError> {
        match self {
            Dlq::Rabbit(r) => r.scan().await,
            Dlq::Kafka(k) => k.scan(include_done).await,
        }
    }

    /// Redrives the letters `filter` selects.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
    ) -> Result<Report, CliError> {
        match self {
            Dlq::Rabbit(r) => r.replay(filter, options).await,
            Dlq::Kafka(k) => k.replay(filter, options).await,
        }
    }

    /// Removes the letters `filter` selects.
    pub async fn purge(&self, filter: &Filter) -> Result<Report, CliError> {
        match self {
            Dlq::Rabbit(r) => r.purge(filter).await,
            Dlq::Kafka(k) => k.purge(filter).await,
        }
    }
}

/// Runs one `dlq` action; returns what to print on stdout.
pub async fn run(action: &DlqAction) -> Result<String, CliError> {
    match action {
        DlqAction::List {
            target,
            filter,
            all,
            json,
        } => {
            let filter = Filter::parse(filter)?;
            let letters = select(Dlq::open(target).await?.scan(*all).await?, &filter);
            if *json {
                let mut out = String::new();
                for l in &letters {
                    out.push_str(
                        &serde_json::to_string(&export::LetterJson::of(l)).unwrap_or_default(),
                    );
                    out.push('\n');
                }
                Ok(out)
            } else {
                Ok(table::render_table(&letters))
            }
        }
        DlqAction::Show {
            target,
            message_id,
            json,
        } => {
            let letters = Dlq::open(target).await?.scan(true).await?;
            let letter = letters
                .iter()
                .rev()
                .find(|l| l.id() == message_id)
                .ok_or_else(|| CliError::NotFound(message_id.clone()))?;
            if *json {
                Ok(
                    serde_json::to_string_pretty(&export::LetterJson::of(letter))
                        .unwrap_or_default()
                        + "\n",
                )
            } else {
                Ok(table::render_letter(letter))
            }
        }
        DlqAction::Export {
            target,
            filter,
            all,
            out,
        } => {
            let filter = Filter::parse(filter)?;
            let letters = select(Dlq::open(target).await?.scan(*all).await?, &filter);
            let n = export::write_jsonl(out, &letters)?;
            Ok(format!("exported {n} message(s) to {out}\n"))
        }
        DlqAction::Replay(args) => {
            let filter = Filter::parse(&args.filter)?;
            let report = Dlq::open(&args.target)
                .await?
                .replay(&filter, &args.into())
                .await?;
            Ok(report.render())
        }
        DlqAction::Purge {
            target,
            filter,
            all,
            yes,
        } => {
            if filter.is_empty() && !*all {
                return Err(CliError::Usage(
                    "purge needs a filter (--error, --kind, --source, --key, --id, --since, --until) or --all".into(),
                ));
            }
            if !*yes {
                return Err(CliError::Usage(
                    "purge deletes dead letters for good: add --yes to confirm (export them first if unsure)".into(),
                ));
            }
            let filter = Filter::parse(filter)?;
            let report = Dlq::open(target).await?.purge(&filter).await?;
            Ok(report.render())
        }
    }
}

fn select(letters: Vec<Letter>, filter: &Filter) -> Vec<Letter> {
    letters.into_iter().filter(|l| filter.matches(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redrive_copy_starts_a_new_count() {
        let letter = Message::new("x")
            .with_message_id("m")
            .with_header(wire::ATTEMPT, "5")
            .with_header(wire::REPLAYED, "1")
            .with_header(wire::ERROR_KIND, "exhausted")
            .with_header(wire::ORIGINAL_SOURCE, "orders");
        let copy = redrive_copy(&letter);
        assert_eq!(copy.header(wire::ATTEMPT), Some("1"));
        assert_eq!(copy.header(wire::REPLAYED), Some("2"));
        assert_eq!(copy.header(wire::ERROR_KIND), None);
        assert_eq!(copy.header(wire::ORIGINAL_SOURCE), Some("orders"));
        assert_eq!(copy.meta.message_id, "m");
    }
}
