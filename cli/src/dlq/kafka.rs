//! A Kafka DLQ topic (`<topic>.<group>.dlq`).
//!
//! A topic is an immutable log, so what was replayed or purged is kept in a
//! compacted state topic `<dlq>.state` (created on first use), keyed by
//! `<message id>@<replayed>`: one key per incarnation of a letter, so a
//! letter that failed again after a redrive (it carries a higher
//! `x-backstop-replayed`) shows up anew. `list` hides replayed and purged
//! letters unless `--all`; reruns skip them.
//!
//! A redrive goes to the group's own retry path: the retry topic of the
//! group's shortest tier (`<topic>.<group>.retry.<tier>`, consumed only by
//! that group's workers through `Kafka::source`), without `x-backstop-due`,
//! so it runs at once. Each copy is confirmed before its state record is
//! written; a crash in between replays it again with the same
//! `x-backstop-replayed`, which the idempotency layer admits only once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use backstop::{Message, Publisher, wire};
use backstop_kafka::rdkafka::consumer::Consumer;
use backstop_kafka::{KafkaConfig, KafkaPublisher, TopicSpec, Topics};

use crate::dlq::{Filter, Letter, Pacer, ReplayOptions, Report, progress, redrive_copy};
use crate::error::CliError;
use crate::kafka_read;

/// A DLQ topic on a Kafka cluster.
#[derive(Debug)]
pub struct KafkaDlq {
    brokers: String,
    topic: String,
    config: KafkaConfig,
}

/// The state topic of a DLQ topic: `<dlq>.state`.
pub fn state_topic(dlq: &str) -> String {
    format!("{dlq}.state")
}

fn state_key(letter: &Letter) -> String {
    format!("{}@{}", letter.id(), letter.message.replayed())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Kafka {
            what: "a background read".into(),
            reason: e.to_string(),
        })?
}

impl KafkaDlq {
    /// Checks that `topic` exists on `brokers`.
    pub async fn open(brokers: &str, topic: &str) -> Result<Self, CliError> {
        let (b, t) = (brokers.to_owned(), topic.to_owned());
        let exists = blocking(move || {
            let consumer = kafka_read::reader(&b)?;
            kafka_read::partitions(&consumer, &t)
        })
        .await?;
        if exists.is_none() {
            return Err(CliError::MissingTopic(topic.to_owned()));
        }
        let mut config = KafkaConfig::new(brokers, "backstop-cli");
        config.message_timeout = Duration::from_secs(15);
        Ok(KafkaDlq {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            config,
        })
    }

    async fn read(&self, topic: &str) -> Result<Vec<(Message, bool)>, CliError> {
        let (b, t) = (self.brokers.clone(), topic.to_owned());
        blocking(move || kafka_read::read_all(&b, &t)).await
    }

    /// The recorded state by key (missing state topic: nothing recorded).
    async fn states(&self) -> Result<HashMap<String, String>, CliError> {
        let mut states = HashMap::new();
        let records = match self.read(&state_topic(&self.topic)).await {
            Ok(r) => r,
            Err(CliError::MissingTopic(_)) => return Ok(states),
            Err(e) => return Err(e),
        };
        for (m, tombstone) in records {
            let Some(key) = m
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
            else {
                continue;
            };
            if tombstone {
                states.remove(&key);
                continue;
            }
            let state = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "done".into());
            states.insert(key, state);
        }
        Ok(states)
    }

    /// The letters, one per message id and replay number (the last copy wins);
    /// with `include_done` also those replayed or purged.
    pub async fn scan(&self, include_done: bool) -> Result<Vec<Letter>, CliError> {
        let states = self.states().await?;
        let mut order: Vec<String> = Vec::new();
        let mut by_key: HashMap<String, Letter> = HashMap::new();
        for (m, _) in self.read(&self.topic).await? {
            let mut letter = Letter::new(m);
            let key = state_key(&letter);
            letter.state = states.get(&key).cloned();
            if by_key.insert(key.clone(), letter).is_none() {
                order.push(key);
            }
        }
        Ok(order
            .into_iter()
            .filter_map(|k| by_key.remove(&k))
            .filter(|l| include_done || l.state.is_none())
            .collect())
    }

    fn publisher(&self) -> Result<KafkaPublisher, CliError> {
        KafkaPublisher::new(&self.config).map_err(|e| CliError::Kafka {
            what: "creating a producer".into(),
            reason: e.to_string(),
        })
    }

    async fn ensure_state_topic(&self) -> Result<(), CliError> {
        let b = self.brokers.clone();
        let brokers = blocking(move || {
            let c = kafka_read::reader(&b)?;
            let md = c
                .fetch_metadata(None, kafka_read::TIMEOUT)
                .map_err(CliError::kafka("reading the cluster metadata"))?;
            Ok(md.brokers().len())
        })
        .await?;
        let replication = i32::try_from(brokers.clamp(1, 3)).unwrap_or(1);
        let spec = TopicSpec::new(state_topic(&self.topic))
            .replication(replication)
            .min_insync_replicas((replication - 1).max(1))
            .config("cleanup.policy", "compact");
        let topics = Topics::new(&self.config).map_err(|e| CliError::Kafka {
            what: "creating an admin client".into(),
            reason: e.to_string(),
        })?;
        topics.create(&[spec]).await.map_err(|e| CliError::Kafka {
            what: format!("creating the state topic {}", state_topic(&self.topic)),
            reason: e.to_string(),
        })
    }

    async fn record(
        &self,
        publisher: &KafkaPublisher,
        letter: &Letter,
        state: &str,
        to: Option<&str>,
    ) -> Result<(), CliError> {
        let body = serde_json::json!({
            "state": state,
            "message_id": letter.id(),
            "replayed": letter.message.replayed(),
            "to": to,
            "at": wire::format_time(SystemTime::now()),
        });
        let record = Message::new(body.to_string()).with_key(state_key(letter));
        let topic = state_topic(&self.topic);
        publisher
            .publish(&topic, &record)
            .await
            .map_err(|e| CliError::Kafka {
                what: format!("recording {state} of {} in {topic}", letter.id()),
                reason: e.to_string(),
            })
    }

    /// The group's redrive destination for `source`: the retry topic of its shortest tier.
    async fn retry_destination(&self, source: &str, group: &str) -> Result<String, CliError> {
        let prefix = format!("{source}.{group}.retry.");
        let b = self.brokers.clone();
        let names = blocking(move || {
            let c = kafka_read::reader(&b)?;
            let md = c
                .fetch_metadata(None, kafka_read::TIMEOUT)
                .map_err(CliError::kafka("listing topics"))?;
            Ok(md
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .collect::<Vec<_>>())
        })
        .await?;
        names
            .into_iter()
            .filter_map(|n| {
                let delay = backstop::wire::parse_duration(n.strip_prefix(&prefix)?)?;
                Some((delay, n))
            })
            .min()
            .map(|(_, n)| n)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "no retry topic {prefix}<tier> exists, so group {group:?} has no redrive path: create it (Kafka::ensure_topics with retry tiers) or pass --to"
                ))
            })
    }

    fn group_of(&self, letter: &Letter) -> Option<String> {
        letter
            .message
            .header(wire::GROUP)
            .map(str::to_owned)
            .or_else(|| {
                let source = letter.original_source()?;
                let rest = self.topic.strip_prefix(source)?.strip_prefix('.')?;
                rest.strip_suffix(".dlq").map(str::to_owned)
            })
    }

    /// Redrives the selected letters and records each in the state topic.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
    ) -> Result<Report, CliError> {
        let letters: Vec<Letter> = self
            .scan(false)
            .await?
            .into_iter()
            .filter(|l| filter.matches(l))
            .collect();
        let mut report = Report {
            dry_run: options.dry_run,
            ..Report::default()
        };
        let mut destinations: HashMap<(String, String), String> = HashMap::new();
        let mut plan = Vec::new();
        for letter in letters {
            let replays = letter.message.replayed();
            if replays >= options.max_replays {
                report.refused.push((letter.id().to_owned(), replays));
                continue;
            }
            let destination = match &options.to {
                Some(to) => to.clone(),
                None => {
                    let source = letter.original_source().map(str::to_owned).ok_or_else(|| {
                        CliError::Usage(format!(
                            "message {:?} has no {} header: pass --to",
                            letter.id(),
                            wire::ORIGINAL_SOURCE
                        ))
                    })?;
                    let group = self.group_of(&letter).ok_or_else(|| {
                        CliError::Usage(format!(
                            "message {:?} has no {} header: pass --to",
                            letter.id(),
                            wire::GROUP
                        ))
                    })?;
                    let k = (source, group);
                    match destinations.get(&k) {
                        Some(d) => d.clone(),
                        None => {
                            let d = self.retry_destination(&k.0, &k.1).await?;
                            destinations.insert(k, d.clone());
                            d
                        }
                    }
                }
            };
            plan.push((letter, destination));
        }
        if options.dry_run {
            report.replayed = plan
                .into_iter()
                .map(|(l, d)| (l.id().to_owned(), d))
                .collect();
            return Ok(report);
        }
        if plan.is_empty() {
            return Ok(report);
        }
        self.ensure_state_topic().await?;
        let publisher = self.publisher()?;
        let mut pacer = Pacer::new(options.rate)?;
        let bar = progress(plan.len() as u64, "replaying");
        for (letter, destination) in plan {
            pacer.tick().await;
            let copy = redrive_copy(&letter.message);
            publisher
                .publish(&destination, &copy)
                .await
                .map_err(|e| CliError::Republish {
                    id: letter.id().to_owned(),
                    destination: destination.clone(),
                    reason: e.to_string(),
                })?;
            self.record(&publisher, &letter, "replayed", Some(&destination))
                .await?;
            bar.inc(1);
            report.replayed.push((letter.id().to_owned(), destination));
        }
        bar.finish_and_clear();
        Ok(report)
    }

    /// Records the selected letters as purged.
    pub async fn purge(&self, filter: &Filter) -> Result<Report, CliError> {
        let letters: Vec<Letter> = self
            .scan(false)
            .await?
            .into_iter()
            .filter(|l| filter.matches(l))
            .collect();
        let mut report = Report::default();
        if letters.is_empty() {
            return Ok(report);
        }
        self.ensure_state_topic().await?;
        let publisher = self.publisher()?;
        for letter in letters {
            self.record(&publisher, &letter, "purged", None).await?;
            report.purged.push(letter.id().to_owned());
        }
        Ok(report)
    }
}
