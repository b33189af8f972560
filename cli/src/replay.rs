//! `backstop replay`: Kafka log replay. Resets a consumer group's committed
//! offsets on a topic to a time or an offset, refusing while the group has
//! active members; `--mode reprocess` also bumps the replay epoch ([`backstop_kafka::epoch`]).

use std::fmt::Write as _;

use backstop_kafka::epoch::{self, EpochError};
use backstop_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use backstop_kafka::rdkafka::{Offset, TopicPartitionList};

use crate::args::{ReplayArgs, ReplayMode};
use crate::error::CliError;
use crate::kafka_read::{self, TIMEOUT};

fn group_consumer(brokers: &str, group: &str) -> Result<BaseConsumer, CliError> {
    crate::kafka_options::client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(CliError::kafka("creating a consumer"))
}

/// Per partition: (previous committed offset, new offset).
fn reset(
    a: &ReplayArgs,
    from_time: Option<std::time::SystemTime>,
) -> Result<Vec<(i32, Option<i64>, i64)>, CliError> {
    let consumer = group_consumer(&a.kafka, &a.group)?;
    let groups = consumer
        .fetch_group_list(Some(&a.group), TIMEOUT)
        .map_err(CliError::kafka(format!("describing group {}", a.group)))?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == a.group)
        && !g.members().is_empty()
    {
        return Err(CliError::GroupActive {
            group: a.group.clone(),
            members: g.members().len(),
        });
    }
    let n = kafka_read::partitions(&consumer, &a.topic)?
        .ok_or_else(|| CliError::MissingTopic(a.topic.clone()))?;
    let mut all = TopicPartitionList::new();
    for p in 0..n {
        all.add_partition(&a.topic, p);
    }
    let committed = consumer
        .committed_offsets(all, TIMEOUT)
        .map_err(CliError::kafka("reading committed offsets"))?;
    let mut plan = Vec::new();
    let mut target = TopicPartitionList::new();
    let by_time = match from_time {
        Some(at) => {
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let mut q = TopicPartitionList::new();
            for p in 0..n {
                q.add_partition_offset(&a.topic, p, Offset::Offset(ms))
                    .map_err(CliError::kafka("building the query"))?;
            }
            Some(
                consumer
                    .offsets_for_times(q, TIMEOUT)
                    .map_err(CliError::kafka("looking offsets up by time"))?,
            )
        }
        None => None,
    };
    for p in 0..n {
        let (low, high) = consumer
            .fetch_watermarks(&a.topic, p, TIMEOUT)
            .map_err(CliError::kafka("reading watermarks"))?;
        let new = match (&by_time, a.from_offset) {
            (Some(found), _) => match found.find_partition(&a.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => high,
            },
            (None, Some(o)) => o.clamp(low, high),
            (None, None) => {
                return Err(CliError::Usage("give --from-time or --from-offset".into()));
            }
        };
        let previous = match committed.find_partition(&a.topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        target
            .add_partition_offset(&a.topic, p, Offset::Offset(new))
            .map_err(CliError::kafka("building the reset"))?;
        plan.push((p, previous, new));
    }
    if !a.dry_run {
        consumer
            .commit(&target, CommitMode::Sync)
            .map_err(CliError::kafka(format!(
                "committing the reset offsets of group {}",
                a.group
            )))?;
    }
    Ok(plan)
}

/// Runs `replay`.
pub async fn run(a: &ReplayArgs) -> Result<String, CliError> {
    let from_time = a
        .from_time
        .as_deref()
        .map(|t| crate::time::parse_flag("--from-time", t))
        .transpose()?;
    let args = a.clone();
    let plan = tokio::task::spawn_blocking(move || reset(&args, from_time))
        .await
        .map_err(|e| CliError::Kafka {
            what: "resetting offsets".into(),
            reason: e.to_string(),
        })??;
    let mut out = String::new();
    let verb = if a.dry_run { "would reset" } else { "reset" };
    for (p, prev, new) in &plan {
        let prev = prev.map_or("none".to_owned(), |o| o.to_string());
        let _ = writeln!(
            out,
            "{verb} group {} on {}[{p}]: {prev} -> {new}",
            a.group, a.topic
        );
    }
    if a.mode == ReplayMode::Reprocess && !a.dry_run {
        let config = crate::kafka_options::kafka_config(&a.kafka, &a.group);
        let epoch = epoch::bump(&config, &a.topic).await.map_err(epoch_error)?;
        let _ = writeln!(
            out,
            "reprocess: replay epoch is now {epoch} (topic {}); restart the workers so they read it and use idempotency namespace \"epoch-{epoch}\"",
            backstop_kafka::epoch_topic(&a.topic, &a.group)
        );
    } else if a.mode == ReplayMode::Redeliver {
        let _ = writeln!(
            out,
            "redeliver: deduplication skips what the group already did"
        );
    }
    Ok(out)
}

/// A failed bump of the replay epoch, as the command reports it.
fn epoch_error(error: EpochError) -> CliError {
    let (what, reason) = match &error {
        EpochError::Read { source, .. } => ("reading the epoch".to_owned(), source.to_string()),
        EpochError::Stalled { .. } => ("reading the epoch".to_owned(), error.to_string()),
        EpochError::Create { source, .. } => {
            ("creating the epoch topic".to_owned(), source.to_string())
        }
        EpochError::Producer(source) => ("creating a producer".to_owned(), source.to_string()),
        EpochError::Write {
            topic,
            epoch,
            source,
        } => (
            format!("writing epoch {epoch} to {topic}"),
            source.to_string(),
        ),
    };
    CliError::Kafka { what, reason }
}
