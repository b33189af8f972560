//! The pace of a redrive: [`Pacer`] spaces publishes to a `--rate`, and
//! [`progress`] shows them on a bar.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CliError;

/// Spaces publishes to at most `rate` per second.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<tokio::time::Interval>,
}

/// The slowest `--rate` (messages per second): one every 100 s.
pub const MIN_RATE: f64 = 0.01;
/// The fastest `--rate` (messages per second): 10 µs apart.
pub const MAX_RATE: f64 = 100_000.0;

/// Checks a `--rate`: a number of messages per second from [`MIN_RATE`] to
/// [`MAX_RATE`] (outside, the interval is longer than a timer takes, or
/// zero).
pub fn check_rate(rate: f64) -> Result<f64, CliError> {
    if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(CliError::Usage(format!(
            "--rate {rate} must be a number of messages per second from {MIN_RATE} to {MAX_RATE} (leave it out for no limit)"
        )))
    }
}

impl Pacer {
    /// A pacer for `rate` messages per second (none: as fast as confirms
    /// come); refused outside [`check_rate`]'s range.
    pub fn new(rate: Option<f64>) -> Result<Self, CliError> {
        let interval = match rate {
            None => None,
            Some(r) => {
                let r = check_rate(r)?;
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
        };
        Ok(Pacer { interval })
    }

    /// Waits for the next slot.
    pub async fn tick(&mut self) {
        if let Some(i) = self.interval.as_mut() {
            i.tick().await;
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
