//! `backstop doctor`.
use crate::args::DoctorArgs;
use crate::error::CliError;
use crate::Output;
/// Runs `doctor`.
pub async fn run(_a: &DoctorArgs) -> Result<Output, CliError> { Err(CliError::Usage("not yet".into())) }
