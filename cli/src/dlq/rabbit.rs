//! A RabbitMQ DLQ queue.
//!
//! RabbitMQ cannot browse a queue, so every action scans it with `basic_get`
//! (which is not bound by a prefetch), at most as many messages as the queue
//! held when the scan began, holding each unacked so it is not read twice.
//! A replay publishes a selected letter with a publisher confirm and only
//! then acks it; a purge acks the selected ones; everything else is nacked
//! with requeue at the end (and the broker requeues it anyway if the CLI
//! dies). The DLQ has no delivery limit, so this never dead-letters it.
//! A scan must finish within the broker's `consumer_timeout` (30 min by
//! default): use `--rate` with care on very large queues.

use backstop::{Headers, Message, Meta, Publisher, attempt, wire};
use backstop_rabbitmq::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions,
};
use backstop_rabbitmq::lapin::types::{FieldTable, ShortString};
use backstop_rabbitmq::lapin::{BasicProperties, Channel};
use backstop_rabbitmq::{RabbitMq, TopologyError, convert::headers_from_table};
use bytes::Bytes;

use crate::dlq::{Filter, Letter, Pacer, ReplayOptions, Report, progress, redrive_copy};
use crate::error::CliError;

/// A DLQ queue on a RabbitMQ broker.
#[derive(Debug)]
pub struct RabbitDlq {
    rabbit: RabbitMq,
    queue: String,
}

/// The message of a `basic_get` from `queue`.
pub fn message_from_get(queue: &str, properties: &BasicProperties, data: Vec<u8>) -> Message {
    let headers: Headers = headers_from_table(properties.headers().as_ref());
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .or_else(|| headers.get(wire::MESSAGE_ID).cloned())
        .unwrap_or_default();
    let meta = Meta {
        source: queue.to_owned(),
        attempt: attempt::from_headers(&headers),
        message_id,
        timestamp: properties
            .timestamp()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
        ..Meta::default()
    };
    Message {
        payload: Bytes::from(data),
        headers,
        key: None,
        meta,
    }
}

/// One pass over the queue.
struct Scan {
    channel: Channel,
    queue: String,
    remaining: u32,
    held: std::collections::BTreeSet<u64>,
}

impl Scan {
    async fn next(&mut self) -> Result<Option<(u64, Letter)>, CliError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(CliError::broker(format!("reading queue {:?}", self.queue)))?;
        let Some(got) = got else {
            self.remaining = 0;
            return Ok(None);
        };
        self.remaining -= 1;
        let d = got.delivery;
        self.held.insert(d.delivery_tag);
        let message = message_from_get(&self.queue, &d.properties, d.data);
        Ok(Some((d.delivery_tag, Letter::new(message))))
    }

    async fn ack(&mut self, tag: u64) -> Result<(), CliError> {
        self.held.remove(&tag);
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await
            .map_err(CliError::broker(format!(
                "acking a message of {:?}",
                self.queue
            )))
    }

    /// Requeues what is still held, waits until the broker processed every
    /// ack (a synchronous round trip on the same channel), and closes.
    async fn finish(self) -> Result<(), CliError> {
        let what = format!("returning messages to {:?}", self.queue);
        if let Some(&tag) = self.held.last() {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .map_err(CliError::broker(what.clone()))?;
        }
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(CliError::broker(what.clone()))?;
        self.channel
            .close(200, "OK".into())
            .await
            .map_err(CliError::broker(what))
    }
}

impl RabbitDlq {
    /// Connects to `url` and checks that `queue` exists.
    pub async fn open(url: &str, queue: &str) -> Result<Self, CliError> {
        let rabbit = RabbitMq::connect(url)
            .await
            .map_err(|e| CliError::rabbit_connect(url, e))?;
        if ShortString::try_new(queue).is_err() {
            return Err(CliError::Usage(format!(
                "queue name {queue:?} is longer than 255 bytes"
            )));
        }
        let dlq = RabbitDlq {
            rabbit,
            queue: queue.to_owned(),
        };
        dlq.count().await?;
        Ok(dlq)
    }

    async fn count(&self) -> Result<u32, CliError> {
        self.rabbit
            .message_count(&self.queue)
            .await
            .map_err(|e| match e {
                TopologyError::Mismatch { reason, .. }
                    if reason.contains("NOT_FOUND") || reason.contains("no queue") =>
                {
                    CliError::MissingQueue(self.queue.clone())
                }
                other => CliError::Broker {
                    what: format!("inspecting queue {:?}", self.queue),
                    reason: crate::error::redact_all(&other.to_string()),
                },
            })
    }

    async fn start(&self) -> Result<Scan, CliError> {
        let remaining = self.count().await?;
        let channel = self.rabbit.channel().await.map_err(|e| CliError::Broker {
            what: "opening a channel".into(),
            reason: e.to_string(),
        })?;
        Ok(Scan {
            channel,
            queue: self.queue.clone(),
            remaining,
            held: Default::default(),
        })
    }

    /// Every letter in the queue (all are requeued afterwards, in order).
    pub async fn scan(&self) -> Result<Vec<Letter>, CliError> {
        let mut scan = self.start().await?;
        let mut letters = Vec::new();
        let result = async {
            while let Some((_, letter)) = scan.next().await? {
                letters.push(letter);
            }
            Ok::<_, CliError>(())
        }
        .await;
        scan.finish().await?;
        result.map(|()| letters)
    }

    /// Republishes each selected letter with a confirm, then acks it.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
    ) -> Result<Report, CliError> {
        let publisher = self.rabbit.publisher();
        let mut pacer = Pacer::new(options.rate)?;
        let mut scan = self.start().await?;
        let bar = progress(u64::from(scan.remaining), "replaying");
        let mut report = Report {
            dry_run: options.dry_run,
            ..Report::default()
        };
        let result = async {
            while let Some((tag, letter)) = scan.next().await? {
                bar.inc(1);
                if !filter.matches(&letter) {
                    continue;
                }
                let replays = letter.message.replayed();
                if replays >= options.max_replays {
                    report.refused.push((letter.id().to_owned(), replays));
                    continue;
                }
                let destination = destination(&letter, options)?;
                if options.dry_run {
                    report.replayed.push((letter.id().to_owned(), destination));
                    continue;
                }
                pacer.tick().await;
                let copy = redrive_copy(&letter.message);
                let published = match &options.to {
                    Some(to) => publisher.publish(to, &copy).await,
                    None => publisher.publish_to_queue(&destination, &copy).await,
                };
                published.map_err(|e| CliError::Republish {
                    id: letter.id().to_owned(),
                    destination: destination.clone(),
                    reason: e.to_string(),
                })?;
                scan.ack(tag).await?;
                report.replayed.push((letter.id().to_owned(), destination));
            }
            Ok::<_, CliError>(())
        }
        .await;
        bar.finish_and_clear();
        publisher.close().await;
        scan.finish().await?;
        result.map(|()| report)
    }

    /// Acks (removes) each selected letter.
    pub async fn purge(&self, filter: &Filter) -> Result<Report, CliError> {
        let mut scan = self.start().await?;
        let mut report = Report::default();
        let result = async {
            while let Some((tag, letter)) = scan.next().await? {
                if filter.matches(&letter) {
                    scan.ack(tag).await?;
                    report.purged.push(letter.id().to_owned());
                }
            }
            Ok::<_, CliError>(())
        }
        .await;
        scan.finish().await?;
        result.map(|()| report)
    }
}

fn destination(letter: &Letter, options: &ReplayOptions) -> Result<String, CliError> {
    options
        .to
        .clone()
        .or_else(|| letter.original_source().map(str::to_owned))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "message {:?} has no {} header: give the destination with --to",
                letter.id(),
                wire::ORIGINAL_SOURCE
            ))
        })
}
