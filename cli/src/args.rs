//! The command line, as clap derive types.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::redact::redact;

/// The environment variable `--amqp` falls back to.
pub const AMQP_URL_ENV: &str = "BACKSTOP_AMQP_URL";
/// The environment variable `--kafka` falls back to.
pub const KAFKA_BROKERS_ENV: &str = "BACKSTOP_KAFKA_BROKERS";
/// The environment variable `--rabbitmq-api` falls back to.
pub const RABBITMQ_API_ENV: &str = "BACKSTOP_RABBITMQ_API";

/// backstop: DLQ redrive, Kafka log replay and a broker audit.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// A librdkafka property for every Kafka client, KEY=VALUE (repeatable),
    /// e.g. security.protocol=SASL_SSL; a secret (key containing password,
    /// secret or key) may be KEY=@/path/to/file and is never shown.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", global = true)]
    pub kafka_options: Vec<backstop_kafka::KafkaOption>,
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
    /// Look into a publisher's local spool (the messages the broker refused for good).
    Spool(crate::spool::SpoolArgs),
    /// Look into a PostgreSQL transactional outbox: rows waiting, rows refused, retry one.
    Outbox(crate::outbox::OutboxArgs),
    /// Serve the DLQ console: browse, filter, redrive and purge dead letters in a browser.
    Console(crate::console::ConsoleArgs),
    /// Save or rebuild queues, exchanges, bindings, policies and topics.
    Topology {
        /// The topology action.
        #[command(subcommand)]
        action: TopologyAction,
    },
}

/// `topology export|import`.
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Write the brokers' topology to a JSON file.
    Export {
        /// Which brokers.
        #[command(flatten)]
        brokers: TopologyArgs,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: String,
    },
    /// Create what a topology export holds and the brokers lack (rerun-safe).
    Import {
        /// Which brokers.
        #[command(flatten)]
        brokers: TopologyArgs,
        /// The export to read.
        #[arg(long = "in", value_name = "FILE")]
        input: String,
    },
}

/// The brokers of `topology`. Its `Debug` output hides the API's password.
#[derive(Clone, Args)]
pub struct TopologyArgs {
    /// RabbitMQ management API (http://user:password@host:15672).
    #[arg(long, value_name = "URL", env = RABBITMQ_API_ENV, hide_env_values = true)]
    pub rabbitmq_api: Option<String>,
    /// The RabbitMQ vhost.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "BROKERS", env = KAFKA_BROKERS_ENV)]
    pub kafka: Option<String>,
    /// Export only names starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

impl std::fmt::Debug for TopologyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyArgs")
            .field("rabbitmq_api", &self.rabbitmq_api.as_deref().map(redact))
            .field("vhost", &self.vhost)
            .field("kafka", &self.kafka)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Which DLQ: a RabbitMQ queue or a Kafka topic. Its `Debug` output hides
/// the password of `--amqp`.
#[derive(Clone, Args, Default)]
pub struct DlqTarget {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost; percent-encode
    /// `@ : / %` in the password).
    #[arg(long, value_name = "URL", env = AMQP_URL_ENV, hide_env_values = true)]
    pub amqp: Option<String>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, value_name = "BROKERS", env = KAFKA_BROKERS_ENV)]
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
    /// RabbitMQ: the longest one letter may stay unacked while a command
    /// settles it; keep it below the broker's consumer_timeout (30 min by
    /// default) minus a margin.
    #[arg(long, value_name = "DURATION", default_value = "25m")]
    pub hold_budget: String,
}

impl std::fmt::Debug for DlqTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqTarget")
            .field("amqp", &self.amqp.as_deref().map(redact))
            .field("kafka", &self.kafka)
            .field("queue", &self.queue)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("dlq", &self.dlq)
            .field("hold_budget", &self.hold_budget)
            .finish()
    }
}

/// Which dead letters an action applies to. All given filters must match.
#[derive(Debug, Clone, Args, Default)]
pub struct FilterArgs {
    /// The error message contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// The error kind is this (decode, permanent, exhausted, panic, timeout,
    /// too_large, crashed, expired, unknown_type).
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
    /// Failed at or after this time (RFC 3339 with an offset: Z or +02:00).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<String>,
    /// Failed before this time (RFC 3339 with an offset: Z or +02:00).
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
    /// Restore an export into the DLQ (confirmed publishes, same message ids;
    /// letters the DLQ already holds are skipped, so a rerun is safe).
    Import {
        /// The DLQ.
        #[command(flatten)]
        target: DlqTarget,
        /// The export to read (JSON lines, as written by `dlq export`).
        #[arg(long = "in", value_name = "FILE")]
        input: String,
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
    /// At most this many messages per second (0.01 to 100000).
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_rate)]
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
    #[arg(long, value_name = "BROKERS", env = KAFKA_BROKERS_ENV)]
    pub kafka: String,
    /// The topic to replay.
    #[arg(long)]
    pub topic: String,
    /// The consumer group to reset.
    #[arg(long)]
    pub group: String,
    /// Replay from the first message at or after this time (RFC 3339 with an offset: Z or +02:00).
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

/// `doctor`. Its `Debug` output hides the passwords of the URLs.
#[derive(Clone, Args)]
pub struct DoctorArgs {
    /// RabbitMQ management API (http://user:password@host:15672; percent-encode
    /// `@ : / %` in the password).
    #[arg(long, value_name = "URL", env = RABBITMQ_API_ENV, hide_env_values = true)]
    pub rabbitmq_api: Option<String>,
    /// RabbitMQ AMQP URL (accepted for symmetry; the audit reads the management API).
    #[arg(long, value_name = "URL", env = AMQP_URL_ENV, hide_env_values = true)]
    pub amqp: Option<String>,
    /// The RabbitMQ vhost to audit.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "BROKERS", env = KAFKA_BROKERS_ENV)]
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

impl std::fmt::Debug for DoctorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoctorArgs")
            .field("rabbitmq_api", &self.rabbitmq_api.as_deref().map(redact))
            .field("amqp", &self.amqp.as_deref().map(redact))
            .field("vhost", &self.vhost)
            .field("kafka", &self.kafka)
            .field("prefix", &self.prefix)
            .field("groups", &self.groups)
            .field("json", &self.json)
            .finish()
    }
}

/// A `--rate`: a number within [`crate::dlq::check_rate`]'s range.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a number: {e}"))?;
    crate::dlq::check_rate(rate).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_passwords() {
        let cli = Cli::try_parse_from([
            "backstop",
            "dlq",
            "list",
            "--amqp",
            "amqp://u:p@s3cret@h/%2f",
            "--queue",
            "q",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("amqp://u:***@h/%2f"), "{shown}");
        let cli = Cli::try_parse_from([
            "backstop",
            "doctor",
            "--rabbitmq-api",
            "http://u:s3cret@h:15672",
            "--amqp",
            "amqp://u:s3cret@h",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
