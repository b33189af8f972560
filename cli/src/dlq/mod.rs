//! The DLQ library behind `backstop dlq`, for the command line and any other
//! front end (a web console): open a DLQ ([`Dlq::rabbit`], [`Dlq::kafka`]),
//! read it ([`Dlq::each`], [`Dlq::list`]) through a [`Filter`], redrive
//! ([`Dlq::replay`]), remove ([`Dlq::purge`]) and restore ([`Dlq::import`])
//! letters. Nothing here prints: every action returns data (letters, a
//! [`Listing`], a [`Report`]). Copies of one letter (same message id,
//! written twice by a crash) are one [`Letter`] with a copy count: listed
//! once, replayed once, purged whole. Resume state lives in the broker: on
//! RabbitMQ a letter leaves the queue only once its redrive is confirmed
//! ([`rabbit`]); on Kafka the compacted state topic records it ([`kafka`]).
//! Every action is safe to rerun after a crash. Memory does not grow with
//! the DLQ: what an action remembers per letter is kept on disk
//! ([`scratch`]). [`run`] is the CLI glue.

pub mod export;
pub mod filter;
pub mod kafka;
pub mod rabbit;
pub mod scratch;
pub mod table;

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use backstop::{Message, wire};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub use self::filter::Filter;
use self::scratch::Scratch;
use crate::args::{DlqAction, DlqTarget, ReplayDlqArgs};
use crate::error::CliError;

/// One dead letter as read from the DLQ.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The message as read (meta: the DLQ's partition/offset on Kafka).
    pub message: Message,
    /// Kafka: `replayed` or `purged` when the state topic records it.
    pub state: Option<String>,
    /// How many copies of this letter (same message id; same replay count on
    /// Kafka) the DLQ holds: more than 1 after a crash wrote it twice. One
    /// letter for every command: listed once, replayed once, purged whole.
    pub copies: u32,
}

impl Letter {
    /// A letter without state, one copy.
    pub fn new(message: Message) -> Self {
        Letter {
            message,
            state: None,
            copies: 1,
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

/// The rows of a [`Dlq::list`], one per selected letter, on disk.
#[derive(Debug)]
pub struct Listing {
    rows: Scratch,
}

impl Listing {
    /// A listing of `letters` (with their copy counts) made with `row`.
    pub fn of(
        letters: &[Letter],
        mut row: impl FnMut(&Letter) -> String,
    ) -> Result<Self, CliError> {
        let mut rows = Scratch::new()?;
        for (i, l) in letters.iter().enumerate() {
            let key = i.to_string();
            rows.sight_many(&key, l.copies)?;
            rows.set_row(&key, &row(l))?;
        }
        Ok(Listing { rows })
    }

    /// Calls `visit` with every row and its letter's copy count, in DLQ order.
    pub fn each(
        &self,
        visit: impl FnMut(&str, u32) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        self.rows.rows(visit)
    }
}

/// The copy of a letter a redrive publishes: [`backstop::copy::redrive`].
pub use backstop::copy::redrive as redrive_copy;

/// One step of a redrive or purge, as it happens (see [`Watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The walk starts over this many letters.
    Started {
        /// Letters the walk reads.
        letters: u64,
    },
    /// One letter was read (selected or not).
    Walked,
    /// A letter's redrive copy went out to `to` (RabbitMQ: the letter leaves
    /// the DLQ once the broker confirms the copy).
    Replayed {
        /// The message id.
        id: &'a str,
        /// Where its copy went.
        to: &'a str,
    },
    /// The loop guard refused a letter.
    Refused {
        /// The message id.
        id: &'a str,
    },
    /// A letter was purged.
    Purged {
        /// The message id.
        id: &'a str,
    },
}

/// A front end's view into a running redrive or purge: called with every
/// [`Step`], on the task that runs the action (keep it quick). The default
/// watches nothing.
///
/// It also carries a stop flag ([`Watch::with_stop`]): a redrive or purge
/// checks it between letters and ends early, cleanly, once it is set.
#[derive(Clone, Default)]
pub struct Watch(
    Option<std::sync::Arc<WatchFn>>,
    Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
);

/// What a [`Watch`] calls.
type WatchFn = dyn Fn(Step<'_>) + Send + Sync;

impl Watch {
    /// A watch that calls `f` with every step.
    pub fn new(f: impl Fn(Step<'_>) + Send + Sync + 'static) -> Self {
        Watch(Some(std::sync::Arc::new(f)), None)
    }

    /// This watch, and `stop`: once it is set, the action stops before its
    /// next letter (the letters in flight settled first).
    #[must_use]
    pub fn with_stop(self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Watch(self.0, Some(stop))
    }

    /// True once the action was asked to stop.
    pub fn stopped(&self) -> bool {
        self.1
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Reports `step`.
    pub fn see(&self, step: Step<'_>) {
        if let Some(f) = &self.0 {
            f(step);
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Watch(..)"
        } else {
            "Watch(none)"
        })
    }
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

fn import_failed(message: &Message, to: &str, e: backstop::PublishError) -> CliError {
    CliError::Republish {
        id: message.meta.message_id.clone(),
        destination: to.to_owned(),
        reason: e.to_string(),
    }
}

/// Spaces publishes to at most `rate` per second.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<tokio::time::Interval>,
}

/// The slowest `--rate` (messages per second): one every 100 s.
pub const MIN_RATE: f64 = 0.01;
/// The fastest `--rate` (messages per second): 10 µs apart.
pub const MAX_RATE: f64 = 100_000.0;

/// Checks a `--rate`: a number of messages per second from [`MIN_RATE`] to
/// [`MAX_RATE`] (outside, the interval is longer than a timer takes, or
/// zero).
pub fn check_rate(rate: f64) -> Result<f64, CliError> {
    if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(CliError::Usage(format!(
            "--rate {rate} must be a number of messages per second from {MIN_RATE} to {MAX_RATE} (leave it out for no limit)"
        )))
    }
}

impl Pacer {
    /// A pacer for `rate` messages per second (none: as fast as confirms
    /// come); refused outside [`check_rate`]'s range.
    pub fn new(rate: Option<f64>) -> Result<Self, CliError> {
        let interval = match rate {
            None => None,
            Some(r) => {
                let r = check_rate(r)?;
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
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
    /// The RabbitMQ DLQ queue `queue` at `url`; no letter stays unacked
    /// longer than `hold_budget` (see [`rabbit`]).
    pub async fn rabbit(url: &str, queue: &str, hold_budget: Duration) -> Result<Self, CliError> {
        Ok(Dlq::Rabbit(
            rabbit::RabbitDlq::open(url, queue, hold_budget).await?,
        ))
    }

    /// The Kafka DLQ topic `topic` on `brokers`.
    pub async fn kafka(brokers: &str, topic: &str) -> Result<Self, CliError> {
        Ok(Dlq::Kafka(Box::new(
            kafka::KafkaDlq::open(brokers, topic).await?,
        )))
    }

    /// Connects to the DLQ named by `target`, checking that it exists.
    ///
    /// `--amqp`/`--kafka` (or their environment variables) say where; when
    /// both are set, `--queue` picks RabbitMQ and `--topic`/`--group` Kafka.
    pub async fn open(target: &DlqTarget) -> Result<Self, CliError> {
        let (amqp, kafka) = match (&target.amqp, &target.kafka) {
            (Some(_), Some(_)) if target.queue.is_some() => (target.amqp.as_ref(), None),
            (Some(_), Some(_)) if target.topic.is_some() || target.group.is_some() => {
                (None, target.kafka.as_ref())
            }
            (Some(_), Some(_)) => {
                return Err(CliError::Usage(format!(
                    "both a RabbitMQ URL and Kafka brokers are set (--amqp/{}, --kafka/{}): name the DLQ with --queue (RabbitMQ) or --topic and --group (Kafka), or unset one",
                    crate::args::AMQP_URL_ENV,
                    crate::args::KAFKA_BROKERS_ENV
                )));
            }
            (a, k) => (a.as_ref(), k.as_ref()),
        };
        match (amqp, kafka) {
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
                let budget = crate::time::parse_duration("--hold-budget", &target.hold_budget)?;
                Dlq::rabbit(url, &name, budget).await
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
                Dlq::kafka(brokers, &name).await
            }
            _ => Err(CliError::Usage(format!(
                "give a broker: --amqp <URL> (RabbitMQ, or {}) or --kafka <BROKERS> (or {})",
                crate::args::AMQP_URL_ENV,
                crate::args::KAFKA_BROKERS_ENV
            ))),
        }
    }

    /// Calls `visit` with every letter, one per message id (Kafka: with
    /// `include_done`, also replayed/purged ones), in DLQ order, and
    /// `more_copies` with the id of each further copy found after its letter
    /// was visited. Nothing is changed.
    pub async fn each(
        &self,
        include_done: bool,
        mut visit: impl FnMut(Letter) -> Result<(), CliError>,
        more_copies: impl FnMut(&str),
    ) -> Result<(), CliError> {
        match self {
            Dlq::Rabbit(r) => r.each(visit, more_copies).await,
            Dlq::Kafka(k) => {
                let mut stream = k.stream(include_done).await?;
                while let Some(letter) = stream.next().await? {
                    visit(letter)?;
                }
                Ok(())
            }
        }
    }

    /// One walk over the DLQ: calls `row` with every letter `filter`
    /// selects and keeps what it returns, on disk, with the letter's final
    /// copy count (on RabbitMQ a later copy is found only further on in the
    /// walk). Memory does not grow with the DLQ: a web page or a table reads
    /// the rows back with [`Listing::each`].
    pub async fn list(
        &self,
        include_done: bool,
        filter: &Filter,
        mut row: impl FnMut(&Letter) -> Result<String, CliError>,
    ) -> Result<Listing, CliError> {
        let rows = std::sync::Mutex::new(Scratch::new()?);
        let lock = || {
            rows.lock()
                .map_err(|_| CliError::Scratch("a listing panicked".into()))
        };
        self.each(
            include_done,
            |letter| {
                // Kafka: one row per incarnation (id and replay count), as
                // its letters come; RabbitMQ: per id, as its copies are found.
                let key = match self {
                    Dlq::Rabbit(_) => letter.id().to_owned(),
                    Dlq::Kafka(_) => kafka::letter_key(&letter),
                };
                let mut rows = lock()?;
                rows.sight_many(&key, letter.copies)?;
                if filter.matches(&letter) {
                    rows.set_row(&key, &row(&letter)?)?;
                }
                Ok(())
            },
            |id| {
                if let Ok(mut rows) = lock() {
                    let _ = rows.sight(id);
                }
            },
        )
        .await?;
        let rows = rows
            .into_inner()
            .map_err(|_| CliError::Scratch("a listing panicked".into()))?;
        Ok(Listing { rows })
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

    /// Publishes the letters of an export (JSON lines, see [`export`]) to
    /// this DLQ with broker confirms, keeping their message ids, headers,
    /// keys and payloads. Letters whose message id the DLQ already holds
    /// (Kafka: also replayed or purged ones) are skipped, so a rerun after a
    /// crash finishes the import without copies.
    pub async fn import(&self, path: &str) -> Result<ImportReport, CliError> {
        let mut present = Scratch::new()?;
        self.each(true, |l| present.sight(l.id()).map(drop), |_| {})
            .await?;
        let mut report = ImportReport::default();
        let mut lines = export::Reader::open(path)?;
        match self {
            Dlq::Rabbit(r) => {
                let publisher = r.publisher();
                let result = async {
                    while let Some(message) = lines.next_message()? {
                        if present.sight(&message.meta.message_id)? > 1 {
                            report.present += 1;
                            continue;
                        }
                        publisher
                            .publish_to_queue(r.queue(), &message)
                            .await
                            .map_err(|e| import_failed(&message, r.queue(), e))?;
                        report.imported += 1;
                    }
                    Ok::<_, CliError>(())
                }
                .await;
                publisher.close().await;
                result?;
            }
            Dlq::Kafka(k) => {
                let publisher = k.publisher()?;
                while let Some(message) = lines.next_message()? {
                    if present.sight(&message.meta.message_id)? > 1 {
                        report.present += 1;
                        continue;
                    }
                    backstop::Publisher::publish(&publisher, k.topic(), &message)
                        .await
                        .map_err(|e| import_failed(&message, k.topic(), e))?;
                    report.imported += 1;
                }
            }
        }
        Ok(report)
    }

    /// Removes the letters `filter` selects; `watch` follows each step.
    pub async fn purge(&self, filter: &Filter, watch: &Watch) -> Result<Report, CliError> {
        match self {
            Dlq::Rabbit(r) => r.purge(filter, watch).await,
            Dlq::Kafka(k) => k.purge(filter, watch).await,
        }
    }

    /// The DLQ's queue or topic name.
    pub fn name(&self) -> &str {
        match self {
            Dlq::Rabbit(r) => r.queue(),
            Dlq::Kafka(k) => k.topic(),
        }
    }

    /// Where a redrive of `letter` with `options` goes (what a dry run
    /// reports): `to`, else the source queue (RabbitMQ) or the group's
    /// retry path (Kafka).
    pub async fn destination(
        &self,
        letter: &Letter,
        options: &ReplayOptions,
    ) -> Result<String, CliError> {
        match self {
            Dlq::Rabbit(r) => rabbit::destination(r.queue(), letter, options),
            Dlq::Kafka(k) => {
                k.destination(letter, options, &mut std::collections::HashMap::new())
                    .await
            }
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
            let dlq = Dlq::open(target).await?;
            // Streamed to stdout from the listing on disk: memory does not
            // grow with the DLQ.
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let io = |source| CliError::Io {
                path: "stdout".into(),
                source,
            };
            if *json {
                let listing = dlq
                    .list(*all, &filter, |l| {
                        let mut json = export::LetterJson::of(l);
                        json.copies = 1; // the final count is added when printed
                        serde_json::to_string(&json).map_err(|e| io(e.into()))
                    })
                    .await?;
                listing.each(|line, copies| {
                    let line = export::with_copies(line, copies);
                    writeln!(out, "{}", table::json_safe(&line)).map_err(io)
                })?;
            } else {
                let listing = dlq.list(*all, &filter, |l| Ok(table::row(l))).await?;
                table::write_table(&listing, &mut out)?;
            }
            out.flush().map_err(io)?;
            Ok(String::new())
        }
        DlqAction::Show {
            target,
            message_id,
            json,
        } => {
            let mut found: Option<Letter> = None;
            let mut copies = 0;
            Dlq::open(target)
                .await?
                .each(
                    true,
                    |l| {
                        if l.id() == message_id {
                            found = Some(l);
                        }
                        Ok(())
                    },
                    |id| copies += u32::from(id == message_id),
                )
                .await?;
            let mut letter = found.ok_or_else(|| CliError::NotFound(message_id.clone()))?;
            letter.copies += copies;
            if *json {
                Ok(table::json_safe(
                    &serde_json::to_string_pretty(&export::LetterJson::of(&letter))
                        .unwrap_or_default(),
                ) + "\n")
            } else {
                Ok(table::render_letter(&letter))
            }
        }
        DlqAction::Export {
            target,
            filter,
            all,
            out,
        } => {
            let filter = Filter::parse(filter)?;
            let dlq = Dlq::open(target).await?;
            let mut writer = export::Writer::create(out)?;
            let mut copies = 0usize;
            dlq.each(
                *all,
                |l| {
                    if filter.matches(&l) {
                        writer.write(&l)?;
                    }
                    Ok(())
                },
                |_| copies += 1,
            )
            .await?;
            let n = writer.finish()?;
            let mut text = format!("exported {n} message(s) to {out}\n");
            if copies > 0 {
                text.push_str(&format!(
                    "skipped {copies} extra copy(ies) of letters (same message id)\n"
                ));
            }
            Ok(text)
        }
        DlqAction::Import { target, input } => {
            let report = Dlq::open(target).await?.import(input).await?;
            Ok(format!(
                "imported {} message(s) from {input}; {} already in the DLQ (skipped)\n",
                report.imported, report.present
            ))
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
            let report = Dlq::open(target)
                .await?
                .purge(&filter, &Watch::default())
                .await?;
            Ok(report.render())
        }
    }
}
