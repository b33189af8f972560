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

use backstop::publish::Publisher;
use backstop::{Message, wire};
use backstop_kafka::rdkafka::consumer::Consumer;
use backstop_kafka::{KafkaConfig, KafkaPublisher, TopicSpec, Topics, blocking};

use crate::dlq::scratch::Scratch;
use crate::dlq::{
    Filter, Letter, Pacer, ReplayOptions, Report, Step, Watch, progress, redrive_copy,
};
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
    backstop_kafka::dlq_state_topic(dlq)
}

/// The key of a letter in the state topic: `<message id>@<replayed>`.
pub fn letter_key(letter: &Letter) -> String {
    message_key(&letter.message)
}

/// One key per incarnation of a letter: `<message id>@<replayed>`.
fn message_key(m: &Message) -> String {
    format!("{}@{}", m.meta.message_id, m.replayed())
}

/// What a record of the state topic says: the letter key and its state
/// (none for a tombstone: live again); none for a record without a key.
pub fn state_record(m: &Message, tombstone: bool) -> Option<(String, Option<String>)> {
    let key = String::from_utf8_lossy(m.key.as_ref()?).into_owned();
    if tombstone {
        return Some((key, None));
    }
    let state = serde_json::from_slice::<serde_json::Value>(&m.payload)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "done".into());
    Some((key, Some(state)))
}

/// The letters of a DLQ topic, read as a stream (see [`KafkaDlq::stream`]).
#[derive(Debug)]
pub struct LetterStream {
    rx: tokio::sync::mpsc::Receiver<Result<Message, CliError>>,
    /// Per letter key: its copies, where the last one is, its state.
    index: Scratch,
    len: u64,
    include_done: bool,
}

impl LetterStream {
    /// How many distinct letters (replayed and purged ones included) the DLQ holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the DLQ holds no letter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next letter: the last copy of each key, with its copy count.
    pub async fn next(&mut self) -> Result<Option<Letter>, CliError> {
        while let Some(read) = self.rx.recv().await {
            let m = read?;
            let key = message_key(&m);
            let Some(at) = self.index.position(&key)? else {
                continue; // written after the index pass
            };
            if (m.meta.partition, m.meta.offset) != (at.partition, at.offset) {
                continue; // an earlier copy
            }
            let state = self.index.state(&key)?;
            if state.is_some() && !self.include_done {
                continue;
            }
            let mut letter = Letter::new(m);
            letter.copies = at.copies;
            letter.state = state;
            return Ok(Some(letter));
        }
        Ok(None)
    }
}

impl KafkaDlq {
    /// Checks that `topic` exists on `brokers`.
    pub async fn open(brokers: &str, topic: &str) -> Result<Self, CliError> {
        crate::kafka_options::check(brokers).await?;
        let (b, t) = (brokers.to_owned(), topic.to_owned());
        let exists = blocking::<_, CliError>(move || {
            let consumer = kafka_read::reader(&b)?;
            kafka_read::partitions(&consumer, &t)
        })
        .await?;
        if exists.is_none() {
            return Err(CliError::MissingTopic(topic.to_owned()));
        }
        let mut config = crate::kafka_options::kafka_config(brokers, "backstop-cli");
        config.message_timeout = Duration::from_secs(15);
        Ok(KafkaDlq {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            config,
        })
    }

    /// One pass over the DLQ and its state topic (missing: nothing
    /// recorded) into an index on disk: per letter key, its copies, where
    /// the last one is (no payloads), and its recorded state.
    async fn index(&self) -> Result<Scratch, CliError> {
        let (b, t) = (self.brokers.clone(), self.topic.clone());
        blocking::<_, CliError>(move || {
            let mut index = Scratch::new()?;
            let states = kafka_read::read_each(&b, &state_topic(&t), |m, tombstone| {
                if let Some((key, state)) = state_record(&m, tombstone) {
                    index.set_state(&key, state.as_deref())?;
                }
                Ok(true)
            });
            match states {
                Ok(()) | Err(CliError::MissingTopic(_)) => {}
                Err(e) => return Err(e),
            }
            kafka_read::read_each(&b, &t, |m, _| {
                index.place(&message_key(&m), m.meta.partition, m.meta.offset)?;
                Ok(true)
            })?;
            Ok(index)
        })
        .await
    }

    /// The letters, one per message id and replay number (the last copy
    /// wins, with the copy count); with `include_done` also those replayed
    /// or purged. Two passes over the topic: an index of keys and positions,
    /// then the letters one at a time through a bounded channel. The index
    /// is on disk (see [`crate::dlq::scratch`]), so memory is bounded by
    /// one letter, the channel and librdkafka's prefetch, not the DLQ's size.
    pub async fn stream(&self, include_done: bool) -> Result<LetterStream, CliError> {
        let index = self.index().await?;
        let len = index.len()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (b, t) = (self.brokers.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let sent = kafka_read::read_each(&b, &t, |m, _| Ok(tx.blocking_send(Ok(m)).is_ok()));
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(LetterStream {
            rx,
            index,
            len,
            include_done,
        })
    }

    /// The producer for redrives and state records, made on first use
    /// (with the state topic), so a run that changes nothing creates neither.
    async fn recorder<'a>(
        &self,
        slot: &'a mut Option<KafkaPublisher>,
    ) -> Result<&'a KafkaPublisher, CliError> {
        if slot.is_none() {
            self.ensure_state_topic().await?;
            *slot = Some(self.publisher()?);
        }
        slot.as_ref().ok_or_else(|| CliError::Kafka {
            what: "creating a producer".into(),
            reason: "no producer".into(),
        })
    }

    /// The DLQ topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A confirming (idempotent) producer on this cluster.
    pub fn publisher(&self) -> Result<KafkaPublisher, CliError> {
        KafkaPublisher::new(&self.config).map_err(|e| CliError::Kafka {
            what: "creating a producer".into(),
            reason: e.to_string(),
        })
    }

    async fn ensure_state_topic(&self) -> Result<(), CliError> {
        let b = self.brokers.clone();
        let brokers = blocking::<_, CliError>(move || {
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
        let record = Message::new(body.to_string()).with_key(letter_key(letter));
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
        let prefix = backstop_kafka::retry_prefix(source, group);
        let b = self.brokers.clone();
        let names = blocking::<_, CliError>(move || {
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

    /// The group whose DLQ this is, from the DLQ's own name
    /// (`<source>.<group>.dlq`, where `<source>` is the letter's
    /// `x-backstop-original-source`, which backstop rewrites on every hop).
    /// Never the `x-backstop-group` header: a name that does not fit leaves
    /// the destination to `--to`.
    fn group_of(&self, letter: &Letter) -> Option<String> {
        let source = letter.original_source()?;
        let rest = self.topic.strip_prefix(source)?.strip_prefix('.')?;
        rest.strip_suffix(".dlq")
            .filter(|group| !group.is_empty())
            .map(str::to_owned)
    }

    /// Redrives the selected letters and records each in the state topic,
    /// one letter at a time.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
    ) -> Result<Report, CliError> {
        let mut report = Report {
            dry_run: options.dry_run,
            ..Report::default()
        };
        let mut destinations: HashMap<(String, String), String> = HashMap::new();
        let mut stream = self.stream(false).await?;
        let mut publisher = None;
        let mut pacer = Pacer::new(options.rate)?;
        let bar = progress(stream.len(), "replaying");
        let watch = &options.watch;
        watch.see(Step::Started {
            letters: stream.len(),
        });
        let result = async {
            while !watch.stopped()
                && let Some(letter) = stream.next().await?
            {
                bar.inc(1);
                watch.see(Step::Walked);
                if !filter.matches(&letter) {
                    continue;
                }
                report.copies += letter.copies as usize - 1;
                let replays = letter.message.replayed();
                if replays >= options.max_replays {
                    report.add_refused(letter.id(), replays);
                    watch.see(Step::Refused { id: letter.id() });
                    continue;
                }
                let destination = self
                    .destination(&letter, options, &mut destinations)
                    .await?;
                if options.dry_run {
                    report.add_replayed(letter.id(), &destination);
                    continue;
                }
                let publisher = self.recorder(&mut publisher).await?;
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
                self.record(publisher, &letter, "replayed", Some(&destination))
                    .await?;
                report.add_replayed(letter.id(), &destination);
                watch.see(Step::Replayed {
                    id: letter.id(),
                    to: &destination,
                });
            }
            Ok::<_, CliError>(())
        }
        .await;
        bar.finish_and_clear();
        if options.dry_run {
            report.copies = 0;
        }
        result.map(|()| report)
    }

    /// Where a redrive of `letter` goes: `--to`, else the group's retry path.
    pub(crate) async fn destination(
        &self,
        letter: &Letter,
        options: &ReplayOptions,
        cache: &mut HashMap<(String, String), String>,
    ) -> Result<String, CliError> {
        if let Some(to) = &options.to {
            return Ok(to.clone());
        }
        let source = letter.original_source().map(str::to_owned).ok_or_else(|| {
            CliError::Usage(format!(
                "message {:?} has no {} header: pass --to",
                letter.id(),
                wire::ORIGINAL_SOURCE
            ))
        })?;
        let group = self.group_of(letter).ok_or_else(|| {
            CliError::Usage(format!(
                "message {:?}: the DLQ {:?} is not named <{}>.<group>.dlq, so its group is unknown: pass --to",
                letter.id(),
                self.topic,
                source
            ))
        })?;
        let k = (source, group);
        if let Some(d) = cache.get(&k) {
            return Ok(d.clone());
        }
        let d = self.retry_destination(&k.0, &k.1).await?;
        cache.insert(k, d.clone());
        Ok(d)
    }

    /// Records the selected letters as purged (every copy: they share the key).
    pub async fn purge(&self, filter: &Filter, watch: &Watch) -> Result<Report, CliError> {
        let mut report = Report {
            purge: true,
            ..Report::default()
        };
        let mut stream = self.stream(false).await?;
        watch.see(Step::Started {
            letters: stream.len(),
        });
        let mut publisher = None;
        while !watch.stopped()
            && let Some(letter) = stream.next().await?
        {
            watch.see(Step::Walked);
            if !filter.matches(&letter) {
                continue;
            }
            let publisher = self.recorder(&mut publisher).await?;
            self.record(publisher, &letter, "purged", None).await?;
            report.copies += letter.copies as usize - 1;
            report.add_purged(letter.id());
            watch.see(Step::Purged { id: letter.id() });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlq(topic: &str) -> KafkaDlq {
        KafkaDlq {
            brokers: "127.0.0.1:9092".into(),
            topic: topic.into(),
            config: KafkaConfig::new("127.0.0.1:9092", "cli"),
        }
    }

    fn letter(source: &str, group: &str) -> Letter {
        Letter::new(
            Message::new(&b"{}"[..])
                .with_header(wire::ORIGINAL_SOURCE, source)
                .with_header(wire::GROUP, group),
        )
    }

    #[test]
    fn the_redrive_group_comes_from_the_dlq_name_never_a_header() {
        let dlq = dlq("orders.b.dlq");
        assert_eq!(dlq.group_of(&letter("orders", "a")), Some("b".into()));
        // A letter whose headers name another topic and group: no group from
        // this DLQ's name, and never the header's.
        assert_eq!(dlq.group_of(&letter("payments", "billing")), None);
        assert_eq!(dlq.group_of(&letter("orders.b", "x")), None);
    }
}
