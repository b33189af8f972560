//! The command line, as clap derive types.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// backstop: DLQ redrive, Kafka log replay and a broker audit.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect, export, replay (redrive) or purge a dead-letter queue or topic.
    Dlq {
        /// The DLQ action.
        #[command(subcommand)]
        action: Box<DlqAction>,
    },
    /// Reset a Kafka consumer group to a time or offset so it consumes history again.
    Replay(ReplayArgs),
    /// Audit a live RabbitMQ and/or Kafka for message-loss risks.
    Doctor(DoctorArgs),
}

/// Which DLQ: a RabbitMQ queue or a Kafka topic.
#[derive(Debug, Clone, Args, Default)]
pub struct DlqTarget {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost).
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// RabbitMQ: the consumed queue; its DLQ is `<queue>.dlq`.
    #[arg(long)]
    pub queue: Option<String>,
    /// Kafka: the consumed topic; with --group its DLQ is `<topic>.<group>.dlq`.
    #[arg(long)]
    pub topic: Option<String>,
    /// Kafka: the consumer group whose DLQ this is.
    #[arg(long)]
    pub group: Option<String>,
    /// The DLQ queue or topic by its full name (instead of --queue or --topic/--group).
    #[arg(long)]
    pub dlq: Option<String>,
}

/// Which dead letters an action applies to. All given filters must match.
#[derive(Debug, Clone, Args, Default)]
pub struct FilterArgs {
    /// The error message contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// The error kind is this (decode, permanent, exhausted, panic, timeout, too_large).
    #[arg(long)]
    pub kind: Option<String>,
    /// The original source (queue or topic) is this.
    #[arg(long)]
    pub source: Option<String>,
    /// The record key (Kafka) or message id is this.
    #[arg(long)]
    pub key: Option<String>,
    /// The message id is one of these (repeatable).
    #[arg(long = "id", value_name = "MESSAGE_ID")]
    pub ids: Vec<String>,
    /// Failed at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<String>,
    /// Failed before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<String>,
}

impl FilterArgs {
    /// True when no filter is given.
    pub fn is_empty(&self) -> bool {
        self.error.is_none()
            && self.kind.is_none()
            && self.source.is_none()
            && self.key.is_none()
            && self.ids.is_empty()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// The DLQ actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// A table of the dead letters: id, source, attempts, error, failure time.
    List {
        /// The DLQ.
        #[command(flatten)]
        target: DlqTarget,
        /// Which letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Kafka: also show letters already replayed or purged.
        #[arg(long)]
        all: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: headers and payload.
    Show {
        /// The DLQ.
        #[command(flatten)]
        target: DlqTarget,
        /// The message id.
        message_id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the selected letters to a JSON-lines file (format in cli/README.md).
    Export {
        /// The DLQ.
        #[command(flatten)]
        target: DlqTarget,
        /// Which letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Kafka: include letters already replayed or purged.
        #[arg(long)]
        all: bool,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: String,
    },
    /// Redrive the selected letters to their original source (or --to).
    Replay(ReplayDlqArgs),
    /// Remove the selected letters from the DLQ.
    Purge {
        /// The DLQ.
        #[command(flatten)]
        target: DlqTarget,
        /// Which letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge every letter (instead of a filter).
        #[arg(long)]
        all: bool,
        /// Confirm: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// `dlq replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayDlqArgs {
    /// The DLQ.
    #[command(flatten)]
    pub target: DlqTarget,
    /// Which letters.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Destination instead of the original source (a queue or `exchange/key` on
    /// RabbitMQ, a topic on Kafka).
    #[arg(long)]
    pub to: Option<String>,
    /// Print what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many messages per second.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// Refuse letters already replayed this many times (loop guard).
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
}

/// How a Kafka log replay treats work already done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReplayMode {
    /// Deduplication skips what was already done.
    #[default]
    Redeliver,
    /// A new replay epoch: every message runs again.
    Reprocess,
}

/// `replay`: Kafka log replay.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: String,
    /// The topic to replay.
    #[arg(long)]
    pub topic: String,
    /// The consumer group to reset.
    #[arg(long)]
    pub group: String,
    /// Replay from the first message at or after this time (RFC 3339).
    #[arg(
        long,
        value_name = "RFC3339",
        conflicts_with = "from_offset",
        required_unless_present = "from_offset"
    )]
    pub from_time: Option<String>,
    /// Replay from this offset on every partition.
    #[arg(long, value_name = "N")]
    pub from_offset: Option<i64>,
    /// redeliver (deduplication skips done work) or reprocess (new epoch).
    #[arg(long, value_enum, default_value_t = ReplayMode::Redeliver)]
    pub mode: ReplayMode,
    /// Print the reset, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// RabbitMQ management API (http://user:password@host:15672).
    #[arg(long, value_name = "URL")]
    pub rabbitmq_api: Option<String>,
    /// RabbitMQ AMQP URL (accepted for symmetry; the audit reads the management API).
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// The RabbitMQ vhost to audit.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Only queues, exchanges and topics whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Kafka consumer groups whose DLQ topics must exist for each topic (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
