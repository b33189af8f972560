//! The name of a delay tier: the last part of its retry queue's or retry
//! topic's name, on every broker (`<queue>.retry.<tier>`,
//! `<topic>.<group>.retry.<tier>`).

use std::time::Duration;

/// A delay's tier name: whole hours as `1h`, whole minutes as `5m`, whole
/// seconds as `30s`, else milliseconds (`250ms`); a delay under a
/// millisecond is `0s`.
///
/// ```
/// use std::time::Duration;
/// use backstop::retry::tier_name;
///
/// assert_eq!(tier_name(Duration::from_secs(300)), "5m");
/// assert_eq!(tier_name(Duration::from_millis(1500)), "1500ms");
/// assert_eq!(tier_name(Duration::ZERO), "0s");
/// ```
pub fn tier_name(delay: Duration) -> String {
    match delay.as_millis() {
        0 => "0s".to_owned(),
        ms if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        ms if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        ms if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_largest_whole_unit() {
        let s = Duration::from_secs(1);
        assert_eq!(tier_name(5 * s), "5s");
        assert_eq!(tier_name(90 * s), "90s");
        assert_eq!(tier_name(300 * s), "5m");
        assert_eq!(tier_name(7200 * s), "2h");
        assert_eq!(tier_name(Duration::from_millis(250)), "250ms");
        assert_eq!(tier_name(Duration::from_micros(500)), "0s");
    }
}
