//! `backstop outbox pending|refused|retry`: a PostgreSQL transactional
//! outbox (`backstop_postgres::Outbox`) as an operator sees it: how many
//! rows wait for the relay, which rows the broker refused for good (too
//! large, invalid, not authorised) or could not be read back, and putting
//! one back in line once the cause is fixed.

use backstop_postgres::{DEFAULT_OUTBOX_TABLE, Outbox, PgConfig};
use clap::{Args, Subcommand};

use crate::error::CliError;
use crate::redact::redact;

/// The environment variable `--url` falls back to.
pub const PG_URL_ENV: &str = "BACKSTOP_PG_URL";

/// `outbox`.
#[derive(Debug, Clone, Args)]
pub struct OutboxArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: OutboxAction,
    /// The PostgreSQL database of the outbox (a password in it is never shown).
    #[arg(long, value_name = "URL", env = PG_URL_ENV, hide_env_values = true, global = true)]
    pub url: Option<String>,
    /// The outbox table (`table` or `schema.table`).
    #[arg(long, default_value = DEFAULT_OUTBOX_TABLE, global = true)]
    pub table: String,
}

/// The `outbox` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum OutboxAction {
    /// How many rows wait for the relay (refused rows not counted).
    Pending,
    /// List the rows set aside: refused for good by the broker, or unreadable.
    Refused {
        /// At most this many rows, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a refused row back in line (after its destination or the message was fixed).
    Retry {
        /// The row's `seq` (from `outbox refused`).
        #[arg(long)]
        seq: u64,
    },
}

/// Runs an `outbox` command; returns what to print.
pub async fn run(args: &OutboxArgs) -> Result<String, CliError> {
    let url = args.url.as_deref().ok_or_else(|| {
        CliError::Usage(format!(
            "give the outbox's database with --url or {PG_URL_ENV}"
        ))
    })?;
    let failed = |e: backstop_postgres::PostgresError| {
        CliError::Outbox(format!("{} ({})", e, redact(url)).replace(url, &redact(url)))
    };
    let pool = PgConfig::new(url)
        .max_connections(1)
        .application_name("backstop-cli")
        .pool()
        .map_err(failed)?;
    let outbox = Outbox::new(pool).with_table(&args.table).map_err(failed)?;
    match &args.action {
        OutboxAction::Pending => Ok(format!("{}\n", outbox.pending().await.map_err(failed)?)),
        OutboxAction::Refused { limit, json } => {
            let rows = outbox.refused(*limit).await.map_err(failed)?;
            Ok(if *json {
                crate::spool::json(&rows)
            } else {
                crate::spool::table(&rows).replace("no refused records", "no refused rows")
            })
        }
        OutboxAction::Retry { seq } => {
            if outbox.retry_refused(*seq).await.map_err(failed)? {
                Ok(format!("row {seq} is back in line for the relay\n"))
            } else {
                Err(CliError::Usage(format!(
                    "row {seq} is not a refused row of {} (see `backstop outbox refused`)",
                    args.table
                )))
            }
        }
    }
}
