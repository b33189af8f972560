//! Times given on the command line (`--since`, `--until`, `--from-time`):
//! RFC 3339 with an explicit offset (`Z`, `+02:00`, `-05:30`), read with
//! `jiff`. A time without an offset is refused, never guessed as UTC or local.

use std::time::SystemTime;

use crate::error::CliError;

/// The instant `text` names, for the flag `flag` (used in the error).
pub fn parse_flag(flag: &str, text: &str) -> Result<SystemTime, CliError> {
    let text = text.trim();
    match text.parse::<jiff::Timestamp>() {
        Ok(at) => SystemTime::try_from(at).map_err(|e| {
            CliError::Usage(format!(
                "{flag} {text:?} is outside this system's clock: {e}"
            ))
        }),
        Err(_) if text.parse::<jiff::civil::DateTime>().is_ok() => Err(CliError::Usage(format!(
            "{flag} {text:?} has no UTC offset, so it could mean any time zone: add Z for UTC or the offset, e.g. {}",
            example(text)
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "{flag} {text:?} is not an RFC 3339 time ({e}); e.g. 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00"
        ))),
    }
}

/// A positive duration such as `25m`, `90s` or `1h 30m`, for the flag `flag`.
pub fn parse_duration(flag: &str, text: &str) -> Result<std::time::Duration, CliError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(CliError::Usage(format!(
            "{flag} {text:?} must be more than zero"
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "{flag} {text:?} is not a duration ({e}); e.g. 25m, 90s or 1h 30m"
        ))),
    }
}

/// `text` with `Z` and `+02:00` appended, as a hint.
fn example(text: &str) -> String {
    let base = if text.contains(['T', 't', ' ']) {
        text.to_owned()
    } else {
        format!("{text}T00:00:00")
    };
    format!("{base}Z or {base}+02:00")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn any_offset_is_read_as_written() {
        let utc = parse_flag("--since", "2024-05-01T12:00:00Z").unwrap();
        assert_eq!(utc, UNIX_EPOCH + Duration::from_secs(1_714_564_800));
        assert_eq!(
            parse_flag("--since", "2024-05-01T14:00:00+02:00").unwrap(),
            utc
        );
        assert_eq!(
            parse_flag("--since", "2024-05-01T06:30:00-05:30").unwrap(),
            utc
        );
        assert_eq!(
            parse_flag("--since", "2024-05-01T12:00:00.250Z").unwrap(),
            utc + Duration::from_millis(250)
        );
    }

    #[test]
    fn a_time_without_an_offset_is_refused_with_the_reason() {
        for text in ["2024-05-01T12:00:00", "2024-05-01 12:00:00", "2024-05-01"] {
            let e = parse_flag("--from-time", text).unwrap_err().to_string();
            assert!(e.contains("has no UTC offset"), "{text}: {e}");
            assert!(e.contains("--from-time"), "{e}");
        }
        let e = parse_flag("--until", "yesterday").unwrap_err().to_string();
        assert!(e.contains("not an RFC 3339 time"), "{e}");
    }
}
