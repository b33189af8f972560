//! `backstop replay`: Kafka log replay.
use crate::args::ReplayArgs;
use crate::error::CliError;
/// Runs `replay`.
pub async fn run(_a: &ReplayArgs) -> Result<String, CliError> {
    Err(CliError::Usage("not yet".into()))
}
