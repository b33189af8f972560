//! The `backstop` command line as a library: DLQ redrive ([`dlq`], usable by
//! other front ends), Kafka log replay ([`replay`]), a broker audit
//! ([`doctor`]), topology backup and restore ([`topology`]), a look into
//! a publisher's spool ([`spool`]) and the DLQ web console ([`console`],
//! on the same DLQ library). `main.rs` only
//! parses arguments and calls [`run`].
//!
//! See `cli/README.md` for the commands and the export format.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod args;
pub mod console;
pub mod dlq;
pub mod doctor;
pub mod error;
pub mod kafka_options;
pub mod kafka_read;
pub mod outbox;
pub mod rabbit_api;
pub mod redact;
pub mod replay;
pub mod spool;
pub mod time;
pub mod topology;

pub use crate::error::CliError;

/// What a command produced: text for stdout and the exit status.
#[derive(Debug)]
pub struct Output {
    /// Printed on stdout.
    pub text: String,
    /// The process exit status (0 unless the doctor found high-severity risks).
    pub status: i32,
}

/// Runs a parsed command line.
pub async fn run(cli: &args::Cli) -> Result<Output, CliError> {
    kafka_options::set(&cli.kafka_options);
    match &cli.command {
        args::Command::Dlq { action } => Ok(Output {
            text: dlq::run(action).await?,
            status: 0,
        }),
        args::Command::Replay(a) => Ok(Output {
            text: replay::run(a).await?,
            status: 0,
        }),
        args::Command::Doctor(a) => doctor::run(a).await,
        args::Command::Spool(a) => Ok(Output {
            text: spool::run(a).await?,
            status: 0,
        }),
        args::Command::Outbox(a) => Ok(Output {
            text: outbox::run(a).await?,
            status: 0,
        }),
        args::Command::Console(a) => {
            console::run(a)
                .await
                .map_err(|e| CliError::Console(Box::new(e)))?;
            Ok(Output {
                text: String::new(),
                status: 0,
            })
        }
        args::Command::Topology { action } => Ok(Output {
            text: topology::run(action).await?,
            status: 0,
        }),
    }
}
