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

mod command;
pub mod export;
pub mod filter;
pub mod kafka;
mod letter;
mod listing;
mod pace;
pub mod rabbit;
mod report;
pub mod scratch;
pub mod table;
mod watch;

use std::time::Duration;

use backstop::Message;

pub use self::command::run;
pub use self::filter::Filter;
pub use self::letter::Letter;
pub use self::listing::Listing;
pub use self::pace::{MAX_RATE, MIN_RATE, Pacer, check_rate, progress};
pub use self::report::{ImportReport, ReplayOptions, Report};
use self::scratch::Scratch;
pub use self::watch::{Step, Watch};
use crate::args::DlqTarget;
use crate::error::CliError;

/// The copy of a letter a redrive publishes: [`backstop::copy::redrive`].
pub use backstop::copy::redrive as redrive_copy;

fn import_failed(message: &Message, to: &str, e: backstop::publish::PublishError) -> CliError {
    CliError::Republish {
        id: message.meta.message_id.clone(),
        destination: to.to_owned(),
        reason: e.to_string(),
    }
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
                    backstop::publish::Publisher::publish(&publisher, k.topic(), &message)
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
